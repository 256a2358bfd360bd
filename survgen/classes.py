"""The action classes and the text prompt of each: defined here and nowhere else.

A dataset's classes are a `ClassVocabulary`. The default is SAR-RARP50's eight
suturing actions. A dataset folder may hold a `classes.json`
(`{"names": [...], "prompt_template": "..."}`) to use other classes; every
command reads it from there, so class names and prompts never drift apart
between training, generation and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from survgen.io import write_json_atomic

SAR_RARP50_ACTIONS = (
    "other",
    "picking up the needle",
    "positioning the needle tip",
    "pushing the needle through the tissue",
    "pulling the needle out",
    "tying a knot",
    "cutting the suture",
    "returning/dropping the needle",
)

DEFAULT_PROMPT_TEMPLATE = "action recognition task of {name}"
CLASSES_FILE = "classes.json"


class UnknownClassError(ValueError):
    """A class given by the user (id, code or name) that the vocabulary lacks."""


@dataclass(frozen=True)
class ClassVocabulary:
    """Class ids 0..n-1, their codes (`G0`..), names and prompts."""

    names: tuple[str, ...] = SAR_RARP50_ACTIONS
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    code_prefix: str = "G"
    _by_key: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))  # a list from JSON or a caller compares equal
        if not self.names:
            raise ValueError("a class vocabulary needs at least one class name")
        if "{name}" not in self.prompt_template:
            raise ValueError(
                f"prompt_template {self.prompt_template!r} must contain '{{name}}', "
                "e.g. 'action recognition task of {name}'"
            )
        keys = {}
        for i, name in enumerate(self.names):
            for key in (str(i), f"{self.code_prefix}{i}".lower(), name.lower()):
                keys[key] = i
        object.__setattr__(self, "_by_key", keys)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def code(self, class_id: int) -> str:
        self._check_id(class_id)
        return f"{self.code_prefix}{class_id}"

    def name(self, class_id: int) -> str:
        self._check_id(class_id)
        return self.names[class_id]

    def prompt(self, class_id: int) -> str:
        """The text prompt of a class, e.g. 'action recognition task of cutting the suture'."""
        return self.prompt_template.format(name=self.name(class_id))

    def prompts(self) -> list[str]:
        return [self.prompt(i) for i in range(len(self))]

    def resolve(self, key: str | int) -> int:
        """Class id from an id (`7`), a code (`G7`) or a name (`cutting the suture`)."""
        if isinstance(key, int):
            self._check_id(key)
            return key
        text = str(key).strip().lower()
        prefix = self.code_prefix.lower()
        digits = text[len(prefix):] if text.startswith(prefix) else text
        found = int(digits) if digits.isdigit() else self._by_key.get(text)  # "7", "07", "G07": an id
        if found is None or not 0 <= found < len(self.names):
            known = ", ".join(f"{self.code(i)} ({n})" for i, n in enumerate(self.names))
            raise UnknownClassError(f"unknown class {key!r}; known classes: {known}")
        return found

    def _check_id(self, class_id: int) -> None:
        if not 0 <= int(class_id) < len(self.names):
            raise UnknownClassError(
                f"class id {class_id} is out of range: this vocabulary has ids 0..{len(self.names) - 1}"
            )

    # ---- persistence: a run folder and a dataset folder carry their vocabulary
    def to_dict(self) -> dict:
        return {"names": list(self.names), "prompt_template": self.prompt_template, "code_prefix": self.code_prefix}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassVocabulary":
        return cls(
            names=tuple(d["names"]),
            prompt_template=d.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
            code_prefix=d.get("code_prefix", "G"),
        )

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CLASSES_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def for_folder(cls, folder: str | Path) -> "ClassVocabulary":
        """The vocabulary stored in `folder/classes.json`, or SAR-RARP50's if there is none."""
        path = Path(folder) / CLASSES_FILE
        if not path.exists():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: not a valid class vocabulary ({e}); expected "
                '{"names": ["...", ...], "prompt_template": "... {name} ..."}'
            ) from e

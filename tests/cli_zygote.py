"""Run `survgen` commands as fresh processes without paying for Python's imports each time.

Started once as a subprocess, this imports torch, diffusers and survgen, then reads
one JSON request per line from stdin: a list of commands, each `{"args", "cwd",
"stdout", "stderr"}`. For each command it forks a child, which points its stdout
and stderr at the given files, moves to `cwd` and runs the real command-line entry
point with those arguments; the child's exit status is the command's. The replies
(one JSON list of exit codes per request) go to stdout. Children of one request
run in parallel: every command is its own process, with nothing shared but the
imported modules.
"""

import importlib
import json
import os
import sys

# imported once here, so that every forked command starts with them loaded
for module in ("torch", "diffusers", "transformers", "survgen.cli.main", "survgen.training.autoencoder",
               "survgen.training.classifier", "survgen.training.stage1", "survgen.training.stage2"):
    importlib.import_module(module)


def _child(command: dict) -> None:
    for fd, path in ((1, command["stdout"]), (2, command["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.chdir(command["cwd"])
    sys.argv = ["survgen", *command["args"]]
    code = 0
    try:
        importlib.import_module("survgen.cli.main").main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - an escaped exception is a traceback the test must see
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    reply = sys.stdout
    for line in sys.stdin:
        pids = []
        for command in json.loads(line):
            pid = os.fork()
            if pid == 0:
                _child(command)
            pids.append(pid)
        reply.write(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()

"""The diffusion objective (v-prediction) and the samplers, separate from the models."""

"""The generative IE task: how a note chunk and its annotations become a prompt and a
target markup, and how model output becomes annotations again."""

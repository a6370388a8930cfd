"""Imports every family adapter so that each registers itself. A new family: one new module,
one import line here."""

from safegap.models import llava  # noqa: F401

"""Name patterns the spec validates against (shared by its modules)."""

import re

# snake_case names: pipeline, source and member names become asset keys, job and file names.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A dotted import path or type name: module.Class, package.module.Type.
DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

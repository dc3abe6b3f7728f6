"""Package layout (everything else is in pyproject.toml).

The repository keeps its YAML recipes in the top-level ``recipes/`` folder; installed,
they are the package ``crossget_cli.builtin_recipes``, so ``--recipe NAME`` finds them in
a wheel and in an editable install alike. pyproject.toml cannot add a package mapped
from outside the package tree to the ones it finds, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["crossget_cli*"]), "crossget_cli.builtin_recipes"],
    package_dir={"crossget_cli.builtin_recipes": "recipes"},
    package_data={"crossget_cli": ["models/*/*"], "crossget_cli.builtin_recipes": ["*.yaml"]},
)

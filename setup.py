"""Ships the Alembic history inside the package: the checkout keeps it at the top level
(migrations/), and a wheel carries a copy as retrieval/migrations, where
retrieval/database/engine.py looks first. Everything else is in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithMigrations(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's migrations/
            return
        target = Path(self.build_lib) / "retrieval" / "migrations"
        shutil.copytree(
            Path(__file__).parent / "migrations",
            target,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )


setup(cmdclass={"build_py": BuildWithMigrations})

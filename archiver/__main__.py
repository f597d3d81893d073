"""``python -m archiver``: the CLI without an installed console script (e.g. on the GPU machine,
where the package is only on PYTHONPATH)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="archiver")

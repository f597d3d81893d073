"""Celery front door: ``celery -A workers worker`` and ``celery -A workers beat``.

Only adapters live here; the work is done by :mod:`archiver.jobs` and :mod:`archiver.pipeline`.
"""

from .app import app

__all__ = ["app"]

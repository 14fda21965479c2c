"""Django models of the test schemas' ``applied`` table, one model class per schema."""

from __future__ import annotations

import functools
from typing import Any

from django.db import models


@functools.cache
def applied_model_for(schema: str) -> Any:
    """A model of ``<schema>.applied`` (Django's ``db_table`` takes a quoted ``"schema"."table"``)."""
    meta = type("Meta", (), {"app_label": "django_app", "db_table": f'"{schema}"."applied"', "managed": False})
    attributes = {
        "__module__": __name__,
        "Meta": meta,
        "n": models.BigAutoField(primary_key=True),
        "event_id": models.TextField(),
        "subject": models.TextField(),
        "seq": models.IntegerField(null=True),
    }
    return type(f"Applied_{schema}", (models.Model,), attributes)

"""gs:// against a local storage emulator, for trying the scan and for the tests.

    STORAGE_EMULATOR_HOST=http://127.0.0.1:9023 ecomatch scan --input 'gs://bucket/in/*.parquet' ...

With ``STORAGE_EMULATOR_HOST`` set (the variable google-cloud-storage and gcsfs already read
for the endpoint), every gs:// client of the scan talks to that server anonymously: Beam's
GCS filesystem (inputs, reports, ``--calibration``, ``--state``) and fsspec's gcsfs
(``image_uri``, gs:// models). Without it nothing changes.

The endpoint needs nothing from us; the credentials do. gcsfs is told ``token="anon"``
through fsspec's configuration (unless one is configured already, e.g. by
``FSSPEC_GS_TOKEN``). Beam 2.77 has no option for anonymous GCS access (``--no_auth`` covers
only the Dataflow API client): its GCS client asks ``google.auth.default()`` first, retrying
for about half a minute and possibly probing the GCE metadata server, so here its
once-per-process credential lookup is settled as "none", which makes it build the
anonymous client. That is the one place the scan touches Beam internals.
"""
from __future__ import annotations

import os

import fsspec

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def storage_emulator() -> str | None:
    """The emulator's address from ``STORAGE_EMULATOR_HOST``, or None."""
    return os.environ.get(EMULATOR_ENV) or None


def use_storage_emulator() -> bool:
    """When ``STORAGE_EMULATOR_HOST`` is set, make this process's gs:// clients anonymous
    (see the module docstring) and return True; else change nothing and return False."""
    if not storage_emulator():
        return False
    fsspec.config.conf.setdefault("gs", {}).setdefault("token", "anon")
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:        # Beam without [gcp]: it has no GCS filesystem to configure
        return True
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials, auth._Credentials._credentials_init = None, True
    return True

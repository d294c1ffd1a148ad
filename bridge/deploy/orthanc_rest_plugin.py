"""A tiny C plugin through which the bridge's Python plugin calls Orthanc's REST API without holding
Python's global lock (GIL).

Why it exists: orthanc-python 4.0 (Debian bookworm) keeps the GIL while a call such as
``orthanc.RestApiGet`` runs inside Orthanc.  Orthanc 1.10.1 removes a deleted resource's files from
the storage area inside its database transaction, and with the bridge's encrypted storage area
(:mod:`bridge.pacs.storage_area`) that removal is a Python callback, which waits for the GIL.  So
one HTTP thread deleting a study (database lock held, waiting for the GIL) and any Python thread
looking a study up (GIL held, waiting for the database lock) wait for each other forever: Orthanc
stopped answering once in CI exactly so (the plugin's audit thread in a ``/tools/lookup``, every
HTTP thread waiting for the GIL).  Newer orthanc-python releases the GIL around SDK calls
("AllowThreads", 4.3); bookworm's cannot.

The fix: Orthanc loads this library as one more plugin (it only keeps the plugin context Orthanc
hands it), and the Python plugin calls it through :mod:`ctypes` (:mod:`bridge.pacs.orthanc_rest`),
which releases the GIL for the duration of a foreign call.  The functions are the SDK's own
``OrthancPluginRestApiGet``/``Post`` (built-in API, as ``orthanc.RestApiGet``/``Post``), compiled
against Debian's ``orthanc-dev`` header of the same Orthanc release.  No REST route, no callback,
no state besides the context: it widens nothing Orthanc exposes.

Built where Orthanc runs (``gcc``, ``libc6-dev``, ``orthanc-dev``) by ``pacs-bridge plugin
civetweb-tls-shim DIR`` together with the HTTPS shim, into the same directory.
"""

from __future__ import annotations

from pathlib import Path

from bridge.deploy.c_build import compile_shared, find_compiler
from bridge.pacs.orthanc_rest import LIBRARY  # the file name the plugin finds the loaded library by

__all__ = ["LIBRARY", "SOURCE", "build", "built"]

SOURCE = r"""
/* PACS SSO Bridge: Orthanc's built-in REST API for the bridge's Python plugin, called through
 * ctypes so that Python's lock is released while Orthanc works (bridge/deploy/orthanc_rest_plugin.py). */
#include <orthanc/OrthancCPlugin.h>
#include <stdint.h>

static OrthancPluginContext* context_ = 0;

ORTHANC_PLUGINS_API int32_t OrthancPluginInitialize(OrthancPluginContext* context)
{
  /* the REST services used here exist in every Orthanc the bridge supports (1.10 and later) */
  if (!OrthancPluginCheckVersionAdvanced(context, 1, 10, 0))
  {
    return -1;
  }
  OrthancPluginSetDescription(context, "PACS SSO Bridge: REST calls of the bridge's Python plugin "
                              "without Python's global lock");
  __atomic_store_n(&context_, context, __ATOMIC_RELEASE);
  return 0;
}

ORTHANC_PLUGINS_API void OrthancPluginFinalize(void)
{
  __atomic_store_n(&context_, (OrthancPluginContext*) 0, __ATOMIC_RELEASE);
}

static OrthancPluginContext* context(void)
{
  return __atomic_load_n(&context_, __ATOMIC_ACQUIRE);
}

ORTHANC_PLUGINS_API const char* OrthancPluginGetName(void)
{
  /* Orthanc finalises plugins in the order of their names: after "python", whose threads call us */
  return "python-pacs-bridge-rest";
}

ORTHANC_PLUGINS_API const char* OrthancPluginGetVersion(void)
{
  return "1";
}

/* 1 once Orthanc has initialised this plugin, 0 before and after */
int32_t pacs_bridge_rest_ready(void)
{
  return context() != 0;
}

/* GET (body ignored) or POST ``uri`` on the built-in REST API; the answer in *answer, which the
 * caller frees with pacs_bridge_rest_free.  Returns an OrthancPluginErrorCode. */
int32_t pacs_bridge_rest_call(int32_t post, const char* uri, const void* body, uint32_t size,
                              OrthancPluginMemoryBuffer* answer)
{
  OrthancPluginContext* c = context();
  if (c == 0)
  {
    return OrthancPluginErrorCode_BadSequenceOfCalls;
  }
  if (post)
  {
    return OrthancPluginRestApiPost(c, answer, uri, body, size);
  }
  return OrthancPluginRestApiGet(c, answer, uri);
}

void pacs_bridge_rest_free(OrthancPluginMemoryBuffer* answer)
{
  OrthancPluginContext* c = context();
  if (c != 0 && answer->data != 0)
  {
    OrthancPluginFreeMemoryBuffer(c, answer);
  }
  answer->data = 0;
  answer->size = 0;
}

const char* pacs_bridge_rest_error(int32_t code)
{
  OrthancPluginContext* c = context();
  return c == 0 ? "Orthanc is not running" : OrthancPluginGetErrorDescription(c, (OrthancPluginErrorCode) code);
}
"""


def build(out_dir: Path, cc: str | None = None) -> Path:
    """Write :data:`LIBRARY` into ``out_dir`` (atomically replaced); return its path."""
    compiler = find_compiler(cc, "the bridge's Orthanc plugin needs its REST helper library")
    out = out_dir / LIBRARY
    compile_shared(compiler, SOURCE, out)
    return out


def built(out_dir: Path) -> bool:
    return (out_dir / LIBRARY).is_file()

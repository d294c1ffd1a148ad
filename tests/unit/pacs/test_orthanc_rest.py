"""bridge.pacs.orthanc_rest: the ctypes side of the GIL-free REST calls, against a stand-in library
with the same C functions (compiled here), and the search for the library Orthanc loaded."""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
from pathlib import Path

import pytest

from bridge.deploy.c_build import compile_shared
from bridge.pacs import orthanc_rest

needs_cc = pytest.mark.skipif(os.environ.get("CI") != "true" and not (shutil.which("cc") or shutil.which("gcc")),
                              reason="no C compiler here")

#: the library's four functions; GET /slow sleeps (to show the GIL is free meanwhile), /missing fails
STAND_IN = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
typedef struct { void* data; uint32_t size; } Buffer;
static int freed = 0;
int32_t pacs_bridge_rest_ready(void) { return 1; }
int32_t pacs_bridge_rest_call(int32_t post, const char* uri, const void* body, uint32_t size, Buffer* out)
{
  if (strcmp(uri, "/missing") == 0) return 17;
  if (strcmp(uri, "/slow") == 0) usleep(300000);
  size_t n = strlen(uri) + 1 + (post ? size : 0);
  char* data = malloc(n);
  memcpy(data, uri, strlen(uri));
  data[strlen(uri)] = post ? '=' : '!';
  if (post && size) memcpy(data + strlen(uri) + 1, body, size);
  out->data = data; out->size = (uint32_t) n;
  return 0;
}
void pacs_bridge_rest_free(Buffer* b) { if (b->data) { free(b->data); freed++; } b->data = 0; b->size = 0; }
const char* pacs_bridge_rest_error(int32_t code) { return code == 17 ? "Unknown resource" : "other"; }
int32_t stand_in_freed(void) { return freed; }
"""


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("lib") / orthanc_rest.LIBRARY
    compile_shared(shutil.which("cc") or "gcc", STAND_IN, out)
    return ctypes.CDLL(str(out))


class OrthancError(Exception):
    pass


@needs_cc
def test_get_and_post_pass_uri_and_body_and_return_the_answer(stand_in: ctypes.CDLL) -> None:
    rest = orthanc_rest.RestWithoutGil(stand_in, OrthancError)
    assert rest.get("/studies/é") == "/studies/é!".encode()
    assert rest.post("/tools/find", '{"Level": "Study"}') == b'/tools/find={"Level": "Study"}'
    body = bytes(range(256)) * 3  # binary, NULs included: passed by length, never as a C string
    assert rest.post("/instances", body) == b"/instances=" + body
    assert stand_in.stand_in_freed() >= 3  # every answer freed by the library that allocated it


@needs_cc
def test_an_error_is_raised_like_orthanc_python_does(stand_in: ctypes.CDLL) -> None:
    rest = orthanc_rest.RestWithoutGil(stand_in, OrthancError)
    with pytest.raises(OrthancError) as err:
        rest.get("/missing")
    assert err.value.args == (17, "Unknown resource")  # the plugin maps args[0] to an HTTP status


@needs_cc
def test_a_nul_in_the_uri_is_refused_never_cut_short(stand_in: ctypes.CDLL) -> None:
    """A C string ends at NUL: ``/studies/A\\0/../B`` would be a request for another resource."""
    rest = orthanc_rest.RestWithoutGil(stand_in, OrthancError)
    for uri in ("/studies/abc\x00/../other", "\x00", "/tools/lookup\x00"):
        with pytest.raises(ValueError, match="NUL"):
            rest.get(uri)
        with pytest.raises(ValueError, match="NUL"):
            rest.post(uri, b"x")


@needs_cc
def test_pythons_lock_is_released_during_a_call(stand_in: ctypes.CDLL) -> None:
    """While one thread waits in the library (300 ms), another runs Python: what keeps a delete's
    storage callback from waiting for a lookup that waits for the delete."""
    rest = orthanc_rest.RestWithoutGil(stand_in, OrthancError)
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = ticks
        rest.get("/slow")
        during = ticks - before
    finally:
        done.set()
        t.join()
    assert during > 10_000, during


def test_the_library_is_found_among_the_mapped_files_only(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00b9200000-7f00b9245000 r-xp 00000000 08:01 1234 /usr/share/orthanc/plugins/libOrthancPython.so\n"
        "7f00b9300000-7f00b9301000 r-xp 00000000 08:01 99 /etc/orthanc/pacs-bridge/civetweb-tls/libPacsBridgeRest.so\n"
        "7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0 [stack]\n")
    assert orthanc_rest.loaded_library(maps) == "/etc/orthanc/pacs-bridge/civetweb-tls/libPacsBridgeRest.so"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /tmp/evil/xlibPacsBridgeRest.so\n"
                    "7f00-7f01 r-xp 00000000 08:01 1 /tmp/libPacsBridgeRest.so.bak\n"
                    "7f00-7f01 rw-p 00000000 00:00 0\n")
    assert orthanc_rest.loaded_library(maps) is None
    assert orthanc_rest.load(OrthancError, maps) is None
    assert orthanc_rest.loaded_library(tmp_path / "absent") is None


@needs_cc
def test_a_body_of_another_type_is_refused(stand_in: ctypes.CDLL) -> None:
    rest = orthanc_rest.RestWithoutGil(stand_in, OrthancError)
    for body in (5, None, [b"x"]):
        with pytest.raises(TypeError, match="bytes or str"):
            rest.post("/tools/find", body)  # type: ignore[arg-type]
    assert rest.post("/x", bytearray(b"ab")) == b"/x=ab"

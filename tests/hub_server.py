"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1, with fault injection.

It answers what the real ``huggingface_hub`` client (2.x) asks for when downloading model files:

- ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length``,
  ``Accept-Ranges``; large-file (LFS) paths also get ``X-Linked-Etag`` (their sha256) and ``X-Linked-Size``.
  ``Range: bytes=N-`` gets ``206`` with ``Content-Range`` (resumed downloads). No Xet headers, so the
  client uses plain HTTP.
- ``GET /api/models/{repo_id}`` and ``/api/models/{repo_id}/revision/{revision}``: repository info (``sha``,
  ``siblings``).
- ``GET /api/models/{repo_id}/tree/{revision}[/{folder}]?recursive=...``: file listing with ``oid``, ``size``,
  ``lfs``.
- Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) like the Hub.

Repositories live in memory: ``{repo_id: {commit_sha: {path: bytes}}}`` plus branch refs (``main`` points
to the last commit added). Usage::

    with HubServer() as hub:
        commit = hub.add_repo("org/repo", {"model.safetensors": data})
        env["HF_ENDPOINT"] = hub.url
        hub.tamper("org/repo", "model.safetensors")           # same size, different bytes, same ETag
        hub.cut_body("org/repo", "model.safetensors", after=100, times=1)  # close mid-body, once
        hub.oversize("org/repo", "model.safetensors", extra=1 << 20)     # a body longer than the file
        gate = hub.stall("org/repo", "model.safetensors", after=100)       # hold the body after 100 bytes
        gate.reached.wait(); ...; gate.release.set()

Faults apply to ``GET`` bodies only (``HEAD`` metadata stays truthful), to every request or to the next
``times`` ones. ``hub.requests`` records ``(method, path, range header)`` of every request.
The pytest fixtures ``hub_server`` and ``hub_env`` are in ``tests/hub_fixtures.py``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Fault", "HubServer", "Stall", "git_blob_sha1", "is_lfs_path"]

_TEXT_SUFFIXES = (".json", ".txt", ".md", ".yaml", ".yml", ".gitattributes")


def is_lfs_path(path: str) -> bool:
    """Whether the server treats ``path`` as an LFS file (everything but small text formats)."""
    return not path.endswith(_TEXT_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Stall:
    """A held transfer: ``reached`` is set once ``after`` bytes are sent; the rest waits for ``release``."""

    after: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Fault:
    """What to do to a file's ``GET`` bodies; ``times=None`` means every request."""

    tamper: bool = False
    cut_after: int | None = None
    stall: Stall | None = None
    extra: int = 0
    times: int | None = None


class HubServer:
    """A threaded Hub-compatible server on ``127.0.0.1`` (random port). See the module docstring."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.refs: dict[str, dict[str, str]] = {}
        self.faults: dict[tuple[str, str], Fault] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: Mapping[str, bytes], revision: str | None = None) -> str:
        """Add a commit holding ``files`` to ``repo_id``; ``main`` points to it. Return the 40-hex commit."""
        with self._lock:
            commits = self.repos.setdefault(repo_id, {})
            if revision is None:
                seed = f"{repo_id}:{len(commits)}:{sorted(files)}".encode()
                revision = hashlib.sha1(seed).hexdigest()
            commits[revision] = dict(files)
            self.refs.setdefault(repo_id, {})["main"] = revision
        return revision

    def tamper(self, repo_id: str, path: str, *, times: int | None = None) -> None:
        """Serve ``path`` with its last byte flipped (same size), while headers keep the true sha256."""
        self.faults[(repo_id, path)] = Fault(tamper=True, times=times)

    def cut_body(self, repo_id: str, path: str, *, after: int, times: int | None = None) -> None:
        """Close the connection after ``after`` bytes of the body (headers announce the full length)."""
        self.faults[(repo_id, path)] = Fault(cut_after=after, times=times)

    def oversize(self, repo_id: str, path: str, *, extra: int, times: int | None = None) -> None:
        """Send ``extra`` bytes more than the file holds, without ``Content-Length`` (HEAD stays truthful)."""
        self.faults[(repo_id, path)] = Fault(extra=extra, times=times)

    def stall(self, repo_id: str, path: str, *, after: int) -> Stall:
        """Hold the next body of ``path`` after ``after`` bytes until ``release`` is set (or 60 s pass)."""
        gate = Stall(after=after)
        self.faults[(repo_id, path)] = Fault(stall=gate, times=1)
        return gate

    def clear_faults(self) -> None:
        """Serve every file faithfully again."""
        self.faults.clear()

    def count(self, method: str, fragment: str = "") -> int:
        """Number of recorded requests with this method whose path contains ``fragment``."""
        return sum(1 for m, p, _ in self.requests if m == method and fragment in p)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, for ``HF_ENDPOINT``."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        """Start serving in a daemon thread."""
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release held transfers."""
        for fault in self.faults.values():
            if fault.stall is not None:
                fault.stall.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lookups used by the handler -------------------------------------------------------------

    def _resolve(self, repo_id: str, revision: str) -> tuple[str | None, dict[str, bytes] | None]:
        commits = self.repos.get(repo_id)
        if commits is None:
            return None, None
        sha = revision if revision in commits else self.refs.get(repo_id, {}).get(revision)
        return sha, (commits.get(sha) if sha else None)

    def _take_fault(self, repo_id: str, path: str) -> Fault | None:
        with self._lock:
            fault = self.faults.get((repo_id, path))
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[(repo_id, path)]
            return fault


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # clients that hang up are expected
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- routing -----------------------------------------------------------------------------------

    def _dispatch(self, head: bool) -> None:
        hub = self.server_hub
        split = urlsplit(self.path)
        hub.requests.append((self.command, split.path, self.headers.get("Range")))
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"]:
            self._api(parts[2:], parse_qs(split.query))
        elif "resolve" in parts[1:]:
            index = parts.index("resolve", 1)
            if len(parts) < index + 3:
                self._error(404, "EntryNotFound", "incomplete resolve url")
                return
            self._resolve_file("/".join(parts[:index]), parts[index + 1], "/".join(parts[index + 2 :]), head)
        else:
            self._error(404, None, "not found")

    def _api(self, parts: list[str], query: dict[str, list[str]]) -> None:
        for keyword in ("revision", "tree"):
            if keyword in parts:
                index = parts.index(keyword)
                repo_id, rest = "/".join(parts[:index]), parts[index + 1 :]
                break
        else:
            keyword, repo_id, rest = "revision", "/".join(parts), ["main"]
        if not rest:
            self._error(404, None, "missing revision")
            return
        sha, files = self.server_hub._resolve(repo_id, rest[0])
        if sha is None or files is None:
            code = "RepoNotFound" if repo_id not in self.server_hub.repos else "RevisionNotFound"
            self._error(404 if code == "RevisionNotFound" else 401, code, f"{repo_id}@{rest[0]}")
            return
        if keyword == "revision":
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": False,
                "siblings": [{"rfilename": path} for path in sorted(files)],
            }
            self._json(info, sha)
            return
        folder = "/".join(rest[1:]).strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        self._json(_tree(files, folder, recursive), sha)

    # -- responses ---------------------------------------------------------------------------------

    def _resolve_file(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        hub = self.server_hub
        sha, files = hub._resolve(repo_id, revision)
        if sha is None or files is None:
            if repo_id not in hub.repos:
                self._error(401, "RepoNotFound", f"repository {repo_id} not found")
            else:
                self._error(404, "RevisionNotFound", f"revision {revision} not found")
            return
        data = files.get(path)
        if data is None:
            self._error(404, "EntryNotFound", f"{path} not found", commit=sha)
            return
        fault = None if head else hub._take_fault(repo_id, path)
        size = len(data)
        start, end = 0, size - 1
        status = 200
        byte_range = self.headers.get("Range")
        if byte_range and not head and byte_range.startswith("bytes="):
            first, _, last = byte_range[len("bytes=") :].partition("-")
            start = int(first or 0)
            end = min(int(last), size - 1) if last else size - 1
            if start >= size:
                self._error(416, None, "range not satisfiable")
                return
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", sha)
        if is_lfs_path(path):
            etag = hashlib.sha256(data).hexdigest()
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(size))
        else:
            etag = git_blob_sha1(data)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if fault is not None and fault.extra:
            self.send_header("Connection", "close")  # the body ends when the connection closes
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        body = data
        if fault is not None and fault.tamper:
            body = data[:-1] + bytes([data[-1] ^ 0xFF])
        body = body[start : end + 1]
        if fault is not None and fault.extra:
            body += b"\0" * fault.extra
        self._send_body(body, fault)

    def _send_body(self, body: bytes, fault: Fault | None) -> None:
        try:
            if fault is not None and fault.cut_after is not None:
                self.wfile.write(body[: fault.cut_after])
                self.wfile.flush()
                self._hang_up()
                return
            if fault is not None and fault.stall is not None:
                gate = fault.stall
                self.wfile.write(body[: gate.after])
                self.wfile.flush()
                gate.reached.set()
                gate.release.wait(timeout=60)
                body = body[gate.after :]
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client went away (killed, or gave up)
            self.close_connection = True

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _json(self, payload: Any, commit: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _tree(files: Mapping[str, bytes], folder: str, recursive: bool) -> list[dict[str, Any]]:
    """The Hub's tree listing of ``folder`` (files with oid, size and lfs info; folders)."""
    prefix = f"{folder}/" if folder else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            sub = prefix + "/".join(parts[:depth])
            if (recursive or depth == 1) and sub not in entries:
                entries[sub] = {"type": "directory", "path": sub, "oid": git_blob_sha1(sub.encode()), "size": 0}
        if not recursive and len(parts) > 1:
            continue
        item: dict[str, Any] = {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": len(data)}
        if is_lfs_path(path):
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entries[path] = item
    return list(entries.values())

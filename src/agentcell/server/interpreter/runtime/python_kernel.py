"""agentcell's Python kernel: ipykernel, started inside a sandbox by
`python3 -c <this file> PREFIX KEY MAX_MESSAGE_BYTES`.

Runs under the sandbox's Debian python3 (not the server's interpreter). It binds the five Jupyter
sockets as unix sockets `PREFIX-1` … `PREFIX-5`, writes "ready" on its original stdout once they are
bound, and then serves. Changes to stock ipykernel, each measured (see docs/design.md):

* no debugpy (saves ~150 ms of start-up) and no SQLite history (no disk write per cell);
* no 0.5 ms sleep before every execute_reply, and no cross-thread flush round trip when a stream
  has nothing buffered (six per execution: ~2 ms together);
* request dates are not parsed with dateutil (~0.3 ms per request), the signature check of
  `do_execute` is cached, and inputs are not re-broadcast (the server is the only client);
* `agentcell_env` in an execute_request's content sets environment variables for that execution
  only: values travel as message data, never as generated source code;
* text holding a lone surrogate (which UTF-8 cannot carry) is packed as JSON escapes instead of
  failing in the kernel, output lost (the server shows it as U+FFFD);
* a DataFrame's columns and a figure's data are added to what displaying them shows
  (rich_output.py, whose source comes first);
* no message grows past MAX_MESSAGE_BYTES, the server's ZMQ_MAXMSGSIZE (one that did would cut the
  server's connection for good, and every later output of the kernel would be lost): stream text
  goes in chunks, and a result bundle too large is sent without its data, as
  `{"data": {}, "agentcell_dropped_bytes": N}`, which the server counts as dropped output.
"""

import functools
import json
import os
import sys

sys.modules["debugpy"] = None
RESULT_TYPES = ("display_data", "execute_result", "update_display_data")


def _write_connection_file(prefix, key):
    os.makedirs(os.path.dirname(prefix), mode=0o700, exist_ok=True)
    ports = dict(shell_port=1, iopub_port=2, stdin_port=3, control_port=4, hb_port=5)
    info = dict(transport="ipc", ip=prefix, key=key, signature_scheme="hmac-sha256", **ports)
    path = prefix + ".json"
    with open(path, "w") as handle:
        json.dump(info, handle)
    return path


def _patch_ipykernel():
    import jupyter_client.session
    from ipykernel import iostream, kernelbase

    jupyter_client.session.extract_dates = lambda obj: obj
    flush = iostream.OutStream.flush

    def flush_if_pending(self):
        if self._flush_pending or self._subprocess_flush_pending:
            flush(self)

    iostream.OutStream.flush = flush_if_pending

    kernelbase._accepts_cell_id = functools.lru_cache(maxsize=64)(kernelbase._accepts_cell_id)

    pack = jupyter_client.session.json_packer

    def json_packer(obj):
        try:
            return pack(obj)
        except UnicodeEncodeError:  # a lone surrogate (print("\ud800")): sent as a JSON escape
            default = jupyter_client.session.json_default
            return json.dumps(obj, default=default, ensure_ascii=True, allow_nan=False).encode()

    session_init = jupyter_client.session.Session.__init__

    def init_session(self, *args, **kwargs):
        session_init(self, *args, **kwargs)
        if self.pack is pack:  # (the class took the packer as its default when it was defined)
            self.pack = json_packer

    jupyter_client.session.Session.__init__ = init_session


def _bound_messages(max_message_bytes):
    from jupyter_client.session import Session

    send = Session.send
    chunk_chars = max(1, min(1 << 20, max_message_bytes // 12))  # JSON: at most 12 bytes a char
    room = max_message_bytes - (64 << 10)  # for the header frames

    def bounded_send(self, stream, msg_or_type, content=None, parent=None, ident=None, **kwargs):
        # ipykernel sends a stream as (type, content), a result as a whole message dict
        whole = msg_or_type if isinstance(msg_or_type, dict) else None
        kind = whole["msg_type"] if whole else msg_or_type
        body = whole["content"] if whole else content
        if kind == "stream" and isinstance(body, dict) and len(body["text"]) > chunk_chars:
            text, parent = body["text"], whole["parent_header"] if whole else parent
            for start in range(0, len(text), chunk_chars):
                part = dict(body, text=text[start : start + chunk_chars])
                sent = send(self, stream, "stream", part, parent, ident, **kwargs)
            return sent
        if kind in RESULT_TYPES and isinstance(body, dict):
            size = len(self.pack(body))
            if size > room:
                body = dict(body, data={}, metadata={}, agentcell_dropped_bytes=size)
                msg_or_type, content = (dict(whole, content=body), None) if whole else (kind, body)
        return send(self, stream, msg_or_type, content, parent, ident, **kwargs)

    Session.send = bounded_send


def _kernel_class():
    from ipykernel.ipkernel import IPythonKernel
    from traitlets import Float

    class Kernel(IPythonKernel):
        _execute_sleep = Float(0.0)

        def _publish_execute_input(self, code, parent, execution_count):
            pass  # the server is this kernel's only client, and it does not echo inputs

        async def execute_request(self, stream, ident, parent):
            env = parent.get("content", {}).get("agentcell_env") or {}
            saved = {name: os.environ.get(name) for name in env}
            os.environ.update({str(k): str(v) for k, v in env.items()})
            try:
                await super().execute_request(stream, ident, parent)
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value

    return Kernel


def main():
    prefix, key, max_message_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    connection_file = _write_connection_file(prefix, key)
    ready = os.dup(1)  # ipykernel captures fd 1; the server reads "ready" from the original pipe
    _patch_ipykernel()
    _bound_messages(max_message_bytes)
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance(kernel_class=_kernel_class())
    app.initialize(
        [
            "-f",
            connection_file,
            "--HistoryManager.enabled=False",
            "--InteractiveShell.colors=NoColor",
            "--IPKernelApp.quiet=True",
        ]
    )
    install_rich_output(app.shell)  # noqa: F821 (rich_output.py's, which this source follows)
    os.write(ready, b"ready\n")
    os.close(ready)
    app.start()


main()

"""Calls to the Hugging Face hub (or the mirror in HF_ENDPOINT) that end: a timeout, a few tries, then an error.

huggingface_hub and datasets send every request through huggingface_hub's shared httpx2 client, but their own
timeouts do not bound a call: `snapshot_download` asks for the repo's metadata with no timeout at all, and a file's
metadata request that timed out is sent again up to 6 times, at 60 s each. So for the length of a call, `call` gives
that client two rules: no request waits longer than `hub.timeout` to connect or for its next byte, and a request
that got no answer fails at once when sent again in the same try, as in offline mode (HF_HUB_OFFLINE), which the
libraries answer from their caches instead of retrying. A try then costs about one timeout.

A timeout per byte does not bound a server that sends one byte a second, so each request also gets `hub.timeout`
in all for its answer: the whole of a metadata request, the status and headers of a download (whose body may
rightly take long). The deadline is a timer signal, which only the main thread receives; a request sent from another
thread (a download's worker) keeps the timeout per byte alone.
"""

import contextlib
import functools
import signal
import threading
from collections.abc import Callable

from edgetune.core.config import HubParams
from edgetune.core.errors import EdgetuneError


def is_id(name: str) -> bool:
    """Could `name` be a hub repository, owner/name: one slash, and not a path written as one
    (absolute, or beginning with `.` or `~`)? A caller that reads local paths too asks first
    whether one exists."""
    return name.count("/") == 1 and not name.startswith(("/", ".", "~"))


def endpoint() -> str:
    """The hub in use: HF_ENDPOINT, else https://huggingface.co (as huggingface_hub read them at import)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


class Attempt:
    """One try of a call: the hook it adds to the hub client, and the requests that got no answer."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.failed: dict[str, Exception] = {}  # url -> its network error

    def client(self):
        """huggingface_hub's own client (the library keeps no public handle on its factory), plus this try's hook."""
        from huggingface_hub.utils._http import default_client_factory

        client = default_client_factory()
        client.event_hooks["request"].append(self.before_request)  # after the library's own: offline mode first
        send = client.send

        def send_by_deadline(request, **options):
            with self.deadline(str(request.url)):
                return send(request, **options)

        client.send = send_by_deadline  # the client's own methods call self.send: this one
        return client

    @contextlib.contextmanager
    def deadline(self, url: str):
        """Raise TimeoutError, as a socket's timeout does, once `timeout` seconds have passed in the block."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def expire(signum, frame):
            error = TimeoutError(f"no complete answer within {self.timeout:g} s (hub.timeout)")
            self.failed.setdefault(url, error)
            raise error

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def before_request(self, request) -> None:
        from huggingface_hub.errors import OfflineModeIsEnabled

        url = str(request.url)
        if url in self.failed:  # the library's own retry
            raise OfflineModeIsEnabled(f"Cannot reach {url}: it did not answer earlier in this try.")
        # The client gave every request a timeout per step (connect, read, ...): None, or the library's choice.
        timeout = {
            step: self.timeout if seconds is None else min(seconds, self.timeout)
            for step, seconds in request.extensions["timeout"].items()
        }
        request.extensions = {**request.extensions, "timeout": timeout, "trace": functools.partial(self.trace, url)}

    def trace(self, url: str, event: str, info: dict) -> None:
        """httpx2's report on each step of a request: one that failed with an error (not a stream the reader closed
        early) failed in the network."""
        if event.endswith(".failed") and isinstance(info["exception"], Exception):
            self.failed.setdefault(url, info["exception"])


def is_connection_error(e: BaseException | None) -> bool:
    """Whether e, or an error it came from, is a failed connection (datasets raises ConnectionError for one)."""
    import httpx2

    seen = set()  # a chain can loop
    while e is not None and id(e) not in seen:
        if isinstance(e, (httpx2.TransportError, ConnectionError, TimeoutError)):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def call(what: str, fn: Callable, p: HubParams, offline_hint: str):
    """fn(), tried 1 + hub.retries times while the hub does not answer; fn's other errors are raised as they are."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    for _ in range(1 + p.retries):
        attempt = Attempt(p.timeout)
        set_client_factory(attempt.client)
        try:
            return fn()
        except Exception as e:
            # A request of this try got no answer, and the call failed for want of a connection (not for a request
            # that was answered, or for offline mode, which sends none).
            if not (attempt.failed and is_connection_error(e)):
                raise
        finally:
            set_client_factory(default_client_factory)  # edgetune sets no other
    url, error = list(attempt.failed.items())[-1]  # the request the last try ended on
    raise EdgetuneError(
        f"{what}: the hub at {endpoint()} did not answer ({url}: {type(error).__name__}: {error}) in any of "
        f"{1 + p.retries} tries, each request given {p.timeout:g} s (hub.timeout) to answer. Check the network "
        f"and HF_ENDPOINT, raise hub.timeout or hub.retries in params.yaml, or do without the hub: {offline_hint}."
    )

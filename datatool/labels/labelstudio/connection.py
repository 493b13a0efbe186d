"""Label Studio: the connection to a server (``connect``), and what the catalogue and the
server say about a rater's projects and their tasks.

The token is never stored, logged or printed; the URL is never logged or printed (error
messages name the server as "the server of --url / LABEL_STUDIO_URL", or "rater R's Label Studio
server"). Double-blind in Label Studio Community means one project per rater on a server of the
rater's own (Community has no per-project permissions: any login of a server lists every
project on it). The catalogue records each rater's server (``raters.labelstudio_url``, recorded
by their first push), each rater's project (``labelstudio_projects``) and which image every task
shows (``labelstudio_tasks``).

Which server a command for rater R reaches: --url if given (it must be R's recorded server, if
R has one: ``labelstudio push --move-server`` moves R), else R's recorded server, else
LABEL_STUDIO_URL. Which token: --token, else LABEL_STUDIO_API_KEY_<R> (R upper-cased, every
character other than a letter or digit as "_"), else LABEL_STUDIO_API_KEY.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import LabelStudioProject, Rater
from datatool.core.errors import DatatoolError, UsageError

URL_ENV = "LABEL_STUDIO_URL"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
PAGE_SIZE = 500


# --------------------------------------------------------------------------- connection


#: Words an error answer of the server its own way, or None to leave it to the general message.
Explain = Callable[[ApiError], DatatoolError | None]


class Connection:
    """An SDK client, and how messages name the server (never by its URL or token)."""

    def __init__(self, client: LabelStudio, where: str, token: str, url: str = ""):
        self.client = client
        self.where = where
        self._token = token
        self.url = url  # to record as a rater's server; never printed

    def __repr__(self) -> str:
        return f"Connection({self.where})"

    def redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    @contextmanager
    def answering(self, what: str, explain: Explain | None = None) -> Iterator[None]:
        """Around every exchange with the server: an HTTP error answer or a server that cannot
        be reached becomes one DatatoolError saying what to do. ``explain`` may word an error
        answer its own way (it returns None to leave it to the general message)."""
        try:
            yield
        except ApiError as exc:
            raise (explain(exc) if explain else None) or self._api_error(what, exc) from None
        except httpx.HTTPError as exc:
            raise DatatoolError(
                f"cannot reach {self.where} ({type(exc).__name__}) while "
                f"trying to {what}: start the server (for a local one: 'make labelstudio') "
                f"or fix --url / {URL_ENV}"
            ) from None

    def call(self, what: str, func: Callable, *args, explain: Explain | None = None, **kwargs):
        """Run one SDK call; failures become a DatatoolError that says what to do."""
        with self.answering(what, explain):
            return func(*args, **kwargs)

    def _api_error(self, what: str, exc: ApiError) -> DatatoolError:
        status = exc.status_code
        if status in (401, 403):
            return DatatoolError(
                f"{_cap(self.where)} refused the token (HTTP {status}) when trying to "
                f"{what}: pass a valid token with --token or {TOKEN_ENV} (Label Studio: "
                "Account & Settings > Personal Access Token, or the legacy token where the "
                "organisation allows legacy tokens)"
            )
        return DatatoolError(
            f"{_cap(self.where)} could not {what} (HTTP {status}): {self.redact(_detail(exc.body))}"
        )

    def request(self, what: str, method: str, path: str, check: bool = True, **kwargs):
        """A request (path relative to the server's root) through the SDK's authenticated
        HTTP client; with ``check`` an HTTP error status raises a DatatoolError."""
        http = self.client._client_wrapper.httpx_client
        with self.answering(what):
            response = http.request(path, method=method, **kwargs)
            if check and response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = response.text[:200]
                raise ApiError(status_code=response.status_code, body=body)
        return response


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _detail(body) -> str:
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        if errors:
            if isinstance(errors, dict):
                return "; ".join(
                    f"{' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for v in errors.values()
                )
            return str(errors)
        if body.get("detail"):
            return str(body["detail"])
    text = str(body)
    if text.lstrip().startswith("<"):
        return "the answer is a web page, not the API: is --url the server's root address?"
    return text[:300]


def rater_token_env(rater: str) -> str:
    """The environment variable holding ``rater``'s own token: LABEL_STUDIO_API_KEY_<RATER>."""
    return f"{TOKEN_ENV}_" + re.sub(r"[^A-Za-z0-9]", "_", rater).upper()


def _normal_url(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class RaterServer:
    """Where a command for a rater goes: a URL (None: LABEL_STUDIO_URL), whose it is, and
    whether it is the rater's recorded server."""

    url: str | None
    rater: str
    recorded: bool

    def connect(self, token: str | None) -> Connection:
        """:func:`connect` to it, with the rater's own token variable first."""
        return connect(self.url, token, rater=self.rater, recorded=self.recorded)


def rater_server(s: Session, rater: Rater, url: str | None) -> RaterServer:
    """The server a command for ``rater`` reaches: ``url`` (which must be the rater's recorded
    server, if they have one), else the recorded one, else LABEL_STUDIO_URL. Read in the
    caller's session; connect outside it (no network inside a transaction)."""
    recorded = rater.labelstudio_url
    if url and url.strip() and recorded and _normal_url(url) != recorded:
        raise UsageError(
            f"rater {rater.name}'s projects are on another Label Studio server (the one recorded "
            f"by their first push) than --url: leave --url out, or move the rater with "
            f"'datatool labelstudio push --rater {rater.name} --url URL --move-server'"
        )
    return RaterServer(recorded or url, rater.name, recorded is not None)


def record_server(s: Session, rater: Rater, url: str, move: bool = False) -> bool:
    """Record ``url`` as the rater's own server (first push; ``move``: replace it); True when
    the record changed. Only the address: the token never enters the catalogue."""
    url = _normal_url(url)
    if rater.labelstudio_url == url or (rater.labelstudio_url and not move):
        return False
    rater.labelstudio_url = url
    return True


def resolve(url: str | None, token: str | None, rater: str | None = None) -> tuple[str, str]:
    """The URL and token a command uses: the arguments, else the rater's token variable, else
    LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY; a usage error when either is missing or bad."""
    url = (url or os.environ.get(URL_ENV) or "").strip()
    own = rater_token_env(rater) if rater else None
    token = token or (os.environ.get(own) if own else None) or os.environ.get(TOKEN_ENV) or ""
    token = token.strip()
    if not url:
        raise UsageError(
            f"no Label Studio server given: pass --url or set {URL_ENV} "
            "(for example http://127.0.0.1:8080)"
        )
    if not token:
        either = f"{own} or {TOKEN_ENV}" if own else TOKEN_ENV
        raise UsageError(
            f"no Label Studio token given: pass --token or set {either} "
            "(Label Studio: Account & Settings > Personal Access Token)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            "the Label Studio URL must start with http:// or https:// and name a "
            "host (for example http://127.0.0.1:8080)"
        )
    if parts.username or parts.password:
        raise UsageError(
            "put no credentials in the Label Studio URL: the token comes from --token or "
            f"{TOKEN_ENV}"
        )
    return _normal_url(url), token


def connect(
    url: str | None = None,
    token: str | None = None,
    rater: str | None = None,
    recorded: bool = False,
) -> Connection:
    """Connect to a Label Studio server (``url``/``token`` or ``LABEL_STUDIO_URL`` /
    ``LABEL_STUDIO_API_KEY``; with ``rater`` their own ``LABEL_STUDIO_API_KEY_<RATER>`` first)
    and check that it answers and accepts the token. ``recorded``: the URL is the rater's
    recorded server (messages say so)."""
    url, token = resolve(url, token, rater)
    if rater and recorded:
        where = f"rater {rater}'s Label Studio server (recorded by their first push)"
    else:
        where = f"the Label Studio server of --url / {URL_ENV}"  # the URL itself is never printed
    client = LabelStudio(base_url=url, api_key=token, timeout=120)
    conn = Connection(client, where, token, url)
    try:
        conn.call("check the token", client.users.whoami)
    except DatatoolError:
        raise
    except Exception as exc:  # e.g. a malformed personal access token the SDK cannot refresh
        raise DatatoolError(
            f"{_cap(where)} did not accept the token "
            f"({type(exc).__name__}): pass a valid token with --token or "
            f"{TOKEN_ENV}"
        ) from None
    return conn


def _plain(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return obj.dict()


def _server_tasks(conn: Connection, project_id: int, annotations: bool) -> list[dict]:
    with conn.answering("list the project's tasks"):  # later pages come while iterating
        pager: Iterable = conn.client.tasks.list(
            project=project_id,
            fields="all" if annotations else "task_only",
            resolve_uri=False,
            page_size=PAGE_SIZE,
        )
        return [_plain(t) for t in pager]


def _server_project(conn: Connection, project_id: int, rater: str | None = None):
    def deleted(exc: ApiError) -> DatatoolError | None:
        if exc.status_code != 404:
            return None
        whose = f" recorded for rater {rater}" if rater else ""
        return DatatoolError(
            f"Label Studio project {project_id}{whose} does not exist on {conn.where}: "
            "it was deleted there, or that is another server than the one pushed to"
        )

    return conn.call(
        f"read project {project_id}", conn.client.projects.get, project_id, explain=deleted
    )


# --------------------------------------------------------------------------- catalogue


def _rater_projects(session: Session, rater_id: int) -> list[LabelStudioProject]:
    """The rater's recorded projects, oldest first."""
    return list(
        session.scalars(
            select(LabelStudioProject)
            .where(LabelStudioProject.rater_id == rater_id)
            .order_by(LabelStudioProject.id)
        )
    )


def _recorded_project(session: Session, project_id: int, rater: Rater) -> LabelStudioProject | None:
    """The catalogue's record of a project on ``rater``'s server, if datatool pushed it: the
    rater's own, else another rater's on the same server (their servers number projects
    each from 1, so a project id on another server is another project)."""
    rows = list(
        session.scalars(
            select(LabelStudioProject)
            .where(LabelStudioProject.project_id == project_id)
            .order_by(LabelStudioProject.id)
        )
    )
    own = [row for row in rows if row.rater_id == rater.id]
    same_server = [row for row in rows if row.rater.labelstudio_url == rater.labelstudio_url]
    found = own or same_server
    return found[0] if found else None

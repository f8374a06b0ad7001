"""A backend's Traffic Mirror sessions, indexed for the create checks.

Each create asks: how many sessions has this ENI, with which numbers; which source ENIs
does this target take sessions from; is this VXLAN id in use. Answered by scanning moto's
session dict, a create cost grew with every session (3,000 creates took 16.5 s into an
empty emulator, 35.5 s with 6,000 sessions there). `IndexedSessions` replaces that dict in
every EC2 backend (`install()`), keeping the answers beside the sessions as they come and
go, through moto's own create, delete and modify.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from moto.ec2.models.traffic_mirrors import TrafficMirrorsBackend

_Keys = tuple[str, str, Any]  # what a session was indexed under: (ENI, target, VXLAN id)


class IndexedSessions(dict[str, Any]):
    """moto's `traffic_mirror_sessions` (session id -> session), plus its indexes.

    A session is indexed under the values it had when it was stored; `reindex` moves it
    after moto changes it in place (ModifyTrafficMirrorSession).
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_eni: defaultdict[str, dict[str, Any]] = defaultdict(dict)
        self._by_target: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._vnis: Counter[Any] = Counter()
        self._keys: dict[str, _Keys] = {}

    # The checks' questions ----------------------------------------------------------------

    def on_eni(self, eni_id: str) -> list[Any]:
        """The sessions whose source is `eni_id`."""
        found = self._by_eni.get(eni_id)
        return list(found.values()) if found else []

    def sources_of(self, target_id: str) -> set[str]:
        """The source ENIs `target_id` takes sessions from (in this account and Region)."""
        found = self._by_target.get(target_id)
        return set(found) if found else set()

    def vni_in_use(self, vni: int) -> bool:
        return self._vnis.get(vni, 0) > 0

    # Keeping them true ------------------------------------------------------------------

    def _index(self, session_id: str, session: Any) -> None:
        keys = (
            session.network_interface_id,
            session.traffic_mirror_target_id,
            session.virtual_network_id,
        )
        self._keys[session_id] = keys
        self._by_eni[keys[0]][session_id] = session
        self._by_target[keys[1]][keys[0]] += 1
        self._vnis[keys[2]] += 1

    def _unindex(self, session_id: str) -> None:
        keys = self._keys.pop(session_id, None)
        if keys is None:
            return
        eni, target, vni = keys
        self._by_eni[eni].pop(session_id, None)
        if not self._by_eni[eni]:
            del self._by_eni[eni]
        self._by_target[target][eni] -= 1
        if self._by_target[target][eni] <= 0:
            del self._by_target[target][eni]
            if not self._by_target[target]:
                del self._by_target[target]
        self._vnis[vni] -= 1
        if self._vnis[vni] <= 0:
            del self._vnis[vni]

    def reindex(self, session_id: str) -> None:
        if session_id in self:
            self._unindex(session_id)
            self._index(session_id, self[session_id])

    def __setitem__(self, session_id: str, session: Any) -> None:
        self._unindex(session_id)
        super().__setitem__(session_id, session)
        self._index(session_id, session)

    def __delitem__(self, session_id: str) -> None:
        super().__delitem__(session_id)
        self._unindex(session_id)

    def pop(self, session_id: str, *default: Any) -> Any:
        if session_id in self:
            self._unindex(session_id)
        return super().pop(session_id, *default)

    def popitem(self) -> tuple[str, Any]:
        session_id, session = super().popitem()
        self._unindex(session_id)
        return session_id, session

    def setdefault(self, session_id: str, default: Any = None) -> Any:
        if session_id not in self:
            self[session_id] = default
        return self[session_id]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for session_id, session in dict(*args, **kwargs).items():
            self[session_id] = session

    def clear(self) -> None:
        super().clear()
        for index in (self._by_eni, self._by_target, self._vnis, self._keys):
            index.clear()


_backend_init = TrafficMirrorsBackend.__init__
_modify = TrafficMirrorsBackend.modify_traffic_mirror_session


def _init_indexed(self: Any) -> None:
    _backend_init(self)
    self.traffic_mirror_sessions = IndexedSessions()


def _modify_and_reindex(
    self: Any, traffic_mirror_session_id: str, *args: Any, **kwargs: Any
) -> Any:
    session = _modify(self, traffic_mirror_session_id, *args, **kwargs)
    self.traffic_mirror_sessions.reindex(traffic_mirror_session_id)
    return session


def install() -> None:
    """Every EC2 backend created from now on keeps its sessions indexed."""
    TrafficMirrorsBackend.__init__ = _init_indexed  # type: ignore[method-assign]
    TrafficMirrorsBackend.modify_traffic_mirror_session = _modify_and_reindex  # type: ignore[method-assign]


def indexed(backend: Any) -> IndexedSessions:
    """The backend's sessions, indexed (a backend made before `install()` is converted once)."""
    sessions = backend.traffic_mirror_sessions
    if not isinstance(sessions, IndexedSessions):
        converted = IndexedSessions()
        converted.update(sessions)
        backend.traffic_mirror_sessions = sessions = converted
    return sessions

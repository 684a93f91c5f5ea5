"""Shared fixtures: synthetic face videos with known vitals, rendered once per test session, and a fault
proxy in front of a transport test module's reference server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capture.synthetic import SyntheticTruth, render_face_video
from tests.fault_proxy import Backend, FaultProxy

RenderedVideo = tuple[Path, SyntheticTruth]


@pytest.fixture(scope="session")
def render_video(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., RenderedVideo]:
    """Render (or reuse, within the session) a synthetic video for the given renderer keyword arguments."""
    cache_dir = tmp_path_factory.mktemp("videos")
    cache: dict[tuple, RenderedVideo] = {}

    def render(**kwargs: object) -> RenderedVideo:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            path = cache_dir / f"video_{len(cache)}.mp4"
            cache[key] = (path, render_face_video(path, **kwargs))
        return cache[key]

    return render


@pytest.fixture(scope="session")
def face_video(render_video: Callable[..., RenderedVideo]) -> RenderedVideo:
    """30 s, 640x480, 30 fps astronaut face: HR about 72 bpm, RR 15 breaths/min, SDNN about 36 ms."""
    return render_video(duration_s=30.0)


@pytest.fixture
def proxy(server: Backend) -> Iterator[FaultProxy]:
    """A fresh fault proxy in front of the `server` fixture (a `tests.fault_proxy.Backend`) the module defines."""
    with FaultProxy(server.base_url) as p:
        yield p

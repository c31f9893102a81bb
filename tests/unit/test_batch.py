"""Which files a batch takes and where their outputs go, on a temporary folder."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from pixstream import submitting
from pixstream.batch import Outcome, discover, output_folders
from pixstream.client import Unreachable
from pixstream.submitting import SubmitFailed, load_spec


def test_folders_are_walked_for_images_and_globs_expand(tmp_path: Path) -> None:
    for name in ("a/x.jpg", "a/b/y.PNG", "a/notes.txt", "c/z.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files, missing = discover(
        [str(tmp_path / "a"), str(tmp_path / "c" / "*.webp"), str(tmp_path / "a/x.jpg")]
    )
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a/b/y.PNG",
        "a/x.jpg",
        "c/z.webp",
    ]
    assert missing == []


def test_what_names_nothing_is_an_error_outcome_not_an_abort(tmp_path: Path) -> None:
    files, missing = discover([str(tmp_path / "nope.jpg"), str(tmp_path / "*.gif")])
    assert files == []
    assert [(m.status, m.errors) for m in missing] == [
        ("error", ["no such file or folder"]),
        ("error", ["matches no file"]),
    ]


def test_output_folders_keep_the_names_and_never_collide() -> None:
    names = output_folders([Path("a/cat.jpg"), Path("b/cat.png"), Path("dog.jpg")])
    assert list(names.values()) == ["cat", "cat-2", "dog"]


def test_a_broken_spec_is_a_one_line_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("[1, 2")
    with pytest.raises(SubmitFailed, match="not valid JSON"):
        load_spec(spec, None)
    with pytest.raises(SubmitFailed, match="cannot read"):
        load_spec(tmp_path / "missing.json", None)
    with pytest.raises(SubmitFailed, match=r"--steps SPEC\.json or --preset"):
        load_spec(None, None)
    assert load_spec(None, "web") == {"preset": "web"}
    assert load_spec(Path(__file__).parents[2] / "examples" / "spec.json", None)["steps"]


@pytest.mark.parametrize(
    ("stop", "heading"),
    [
        (KeyboardInterrupt(), "interrupted: 1 job(s) created keep running on the server"),
        (Unreachable("the ingress went away"), "created before the ingress stopped answering"),
    ],
)
def test_a_batch_stopped_part_way_names_the_jobs_it_created(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stop: BaseException,
    heading: str,
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")

    async def one_created_then_stopped(*args: Any) -> None:
        outcomes: list[Outcome] = args[-1]
        outcomes += [Outcome("a.jpg", "submitted", job_id="job-a"), Outcome("b.jpg")]
        raise stop

    monkeypatch.setattr(submitting, "_batch", one_created_then_stopped)
    run = functools.partial(submitting.run, "http://127.0.0.1:1", (str(tmp_path),), {},
                            concurrency=1, wait=False, out=None, json_output=True,
                            api_key=None)  # fmt: skip
    if isinstance(stop, Unreachable):
        with pytest.raises(SubmitFailed, match="the ingress went away"):
            run()
    else:
        assert run() == 130
    shown = capsys.readouterr().err
    assert heading in shown
    assert "a.jpg: job-a" in shown
    assert "b.jpg" not in shown

"""Registry store on a real SQLite file and a real PostgreSQL database (the `registry` fixture
runs each test on both)."""

from __future__ import annotations

from datetime import timezone

import pytest
from sqlalchemy import text, update

from registry import models as M
from registry.engine import mask_url, network_filesystem, normalize_url
from registry.errors import InvalidInput, NotFound, StoreError
from registry.eval_key import EvalKey
from registry.store import Registry

HASH_A, HASH_B, HASH_C = "a" * 64, "b" * 64, "c" * 64


def _files(size: int = 10, mtime_ns: int = 1) -> list[dict]:
    return [{"name": "trainable_rows.pt", "size": size, "mtime_ns": mtime_ns, "sha256": "f" * 64}]


def _token_space(registry: Registry, abi_hash: str = HASH_A, path: str = "/runs/r1/token_space.json"):
    return registry.upsert_token_space(
        abi_hash=abi_hash,
        text_vocab_size=151_643,
        vocab_size_total=151_643 + 16_384,
        spec={"ranges": {"audio": [151_643, 167_027]}},
        codec_versions={"audio": "1.0"},
        tokenizer_version="qwen3",
        path=path,
    )


def _checkpoint(registry: Registry, run_id: int, step: int, **overrides):
    fields = dict(
        step=step,
        track="B",
        status="valid",
        content_hash=f"{step:064d}",
        files=_files(),
        base_model="Qwen/Qwen3-8B-Base",
        has_token_space=True,
        row_start=151_643,
        row_end=167_027,
        meta={"dtype": "bfloat16"},
    )
    fields.update(overrides)
    return registry.upsert_checkpoint(path=f"/runs/r1/checkpoint_{step}", run_id=run_id, **fields)


def _evalset(registry: Registry, name: str = "dev", path: str = "/evalsets/dev", content_hash: str = HASH_A, **kwargs):
    return registry.register_evalset(
        name=name,
        path=path,
        content_hash=content_hash,
        token_space_hash=HASH_A,
        manifest={"token_space_hash": HASH_A},
        tasks={"a2t": {"examples": 3, "scored_tokens": 30}},
        n_examples=3,
        files=_files(),
        **kwargs,
    )


@pytest.fixture
def run(registry: Registry):
    return registry.upsert_run(path="/runs/r1", name="r1", track="B")


# -- token spaces and runs -------------------------------------------------------------------


def test_token_space_upsert_is_idempotent_on_abi_hash(registry: Registry) -> None:
    first = _token_space(registry)
    again = _token_space(registry, path="/elsewhere/token_space.json")
    assert again == first
    assert again.first_path == "/runs/r1/token_space.json"
    assert registry.get_token_space(abi_hash=HASH_A) == first
    assert registry.list_token_spaces() == [first]
    assert first.created_at.tzinfo == timezone.utc


def test_get_of_unknown_names_the_value(registry: Registry) -> None:
    with pytest.raises(NotFound, match=r"no token space with abi_hash 'zzz'"):
        registry.get_token_space(abi_hash="zzz")
    with pytest.raises(InvalidInput, match="exactly one of id, name, path"):
        registry.get_run(id=1, name="r1")


def test_run_upsert_updates_only_given_fields(registry: Registry) -> None:
    space = _token_space(registry)
    created = registry.upsert_run(path="/runs/r1", name="r1", base_model="Qwen/Qwen3-8B-Base")
    assert created.track == "unknown"
    updated = registry.upsert_run(path="/runs/r1", name="r1-renamed", track="B", token_space_id=space.id)
    assert (updated.id, updated.name, updated.track) == (created.id, "r1-renamed", "B")
    assert updated.base_model == "Qwen/Qwen3-8B-Base"
    assert updated.token_space_id == space.id
    assert registry.list_runs() == [updated]
    assert registry.get_run(name="r1-renamed") == updated


def test_bad_run_track_is_refused_before_touching_the_db(registry: Registry) -> None:
    before = registry.snapshot()
    with pytest.raises(InvalidInput, match="run track 'C' is not one of A, B, mixed, unknown"):
        registry.upsert_run(path="/runs/x", name="x", track="C")
    assert registry.snapshot() == before


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_new_unchanged_updated(registry: Registry, run) -> None:
    created, status = _checkpoint(registry, run.id, 100)
    assert status == "new"
    assert created.files == _files() and created.meta == {"dtype": "bfloat16"}

    same, status = _checkpoint(registry, run.id, 100)
    assert status == "unchanged"
    assert same == created

    touched, status = _checkpoint(registry, run.id, 100, files=_files(mtime_ns=2))
    assert status == "unchanged"  # same content; the refreshed mtime is still stored
    assert registry.checkpoint_files_index()[created.path][0] == _files(mtime_ns=2)

    broken, status = _checkpoint(registry, run.id, 100, status="invalid", reason="rows missing")
    assert status == "updated"
    assert (broken.id, broken.status, broken.reason) == (created.id, "invalid", "rows missing")
    assert registry.list_checkpoints(status="invalid") == [broken]
    assert registry.list_checkpoints(status="valid") == []


def test_new_checkpoint_content_change_is_updated(registry: Registry, run) -> None:
    _checkpoint(registry, run.id, 100)
    changed, status = _checkpoint(registry, run.id, 100, content_hash=HASH_C)
    assert status == "updated"
    assert registry.get_checkpoint(content_hash=HASH_C) == changed


def test_checkpoint_input_errors_leave_registry_unchanged(registry: Registry, run) -> None:
    _checkpoint(registry, run.id, 100)
    before = registry.snapshot()
    with pytest.raises(InvalidInput, match="needs track, status"):
        registry.upsert_checkpoint(path="/runs/r1/checkpoint_5", run_id=run.id, step=5)
    with pytest.raises(InvalidInput, match=r"unknown checkpoints field\(s\) colour; known: .*content_hash"):
        _checkpoint(registry, run.id, 100, colour="red")
    with pytest.raises(InvalidInput, match="checkpoint status 'ok' is not one of valid, invalid"):
        _checkpoint(registry, run.id, 7, status="ok")
    assert registry.snapshot() == before


def test_constraint_violation_is_a_one_line_store_error(registry: Registry, run) -> None:
    before = registry.snapshot()
    with pytest.raises(StoreError) as caught:
        _checkpoint(registry, run_id=run.id + 999, step=1)  # no such run: foreign key
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"registry {registry.url}: IntegrityError:")
    assert "foreign key" in message.lower()
    assert caught.value.retryable
    assert registry.snapshot() == before


def test_files_index_filters_by_folder_not_string_prefix(registry: Registry, run) -> None:
    _checkpoint(registry, run.id, 100)
    _checkpoint(registry, run.id, 200, status="invalid", reason="bad", content_hash=None)
    other = registry.upsert_run(path="/runs/r1_x", name="r1_x")
    registry.upsert_checkpoint(path="/runs/r1_x/checkpoint_1", run_id=other.id, track="B", status="valid")

    index = registry.checkpoint_files_index(paths_under="/runs/r1/")
    assert index == {
        "/runs/r1/checkpoint_100": (_files(), f"{100:064d}", "valid"),
        "/runs/r1/checkpoint_200": (_files(), None, "invalid"),
    }
    assert len(registry.checkpoint_files_index()) == 3
    assert registry.checkpoint_files_index(paths_under="/runs/r") == {}


def test_list_checkpoints_by_run_in_step_order(registry: Registry, run) -> None:
    for step in (300, 100, 200):
        _checkpoint(registry, run.id, step)
    other = registry.upsert_run(path="/runs/r2", name="r2")
    registry.upsert_checkpoint(path="/runs/r2/checkpoint_1", run_id=other.id, track="B", status="valid")
    assert [c.step for c in registry.list_checkpoints(run_id=run.id)] == [100, 200, 300]
    assert len(registry.list_checkpoints()) == 4


# -- eval sets -------------------------------------------------------------------------------


def test_evalset_registration_statuses(registry: Registry) -> None:
    created, status = _evalset(registry)
    assert status == "new"
    assert _evalset(registry) == (created, "unchanged")
    replaced, status = _evalset(registry, path="/evalsets/dev-v2", content_hash=HASH_B, replace=True)
    assert status == "replaced"
    assert (replaced.path, replaced.content_hash) == ("/evalsets/dev-v2", HASH_B)
    assert replaced.id != created.id  # a new version: results on the old content stay apart
    assert registry.get_evalset(name="dev") == replaced
    old = registry.get_evalset(id=created.id)
    assert (old.name, old.content_hash) == (f"dev@{created.content_hash[:12]}", created.content_hash)
    assert sorted(e.name for e in registry.list_evalsets()) == ["dev", old.name]
    back, status = _evalset(registry, content_hash=created.content_hash, replace=True)
    assert (status, back.id, back.name) == ("replaced", created.id, "dev")


def test_evalset_name_collision_names_both_paths(registry: Registry) -> None:
    _evalset(registry)
    before = registry.snapshot()
    with pytest.raises(InvalidInput) as caught:
        _evalset(registry, path="/evalsets/other", content_hash=HASH_B)
    message = str(caught.value)
    assert "'dev'" in message and "/evalsets/dev " in message and "/evalsets/other" in message
    assert "replace=True" in message
    assert registry.snapshot() == before


def test_evalset_same_content_under_another_name_is_refused(registry: Registry) -> None:
    _evalset(registry)
    with pytest.raises(InvalidInput, match=r"same content .* as eval set 'dev' registered from /evalsets/dev"):
        _evalset(registry, name="dev-copy", path="/evalsets/copy")
    assert registry.counts()["evalsets"] == 1


# -- results and row stats -------------------------------------------------------------------


def test_results_are_appended_and_found_latest_first(registry: Registry, run) -> None:
    checkpoint, _ = _checkpoint(registry, run.id, 100)
    evalset, _ = _evalset(registry)
    common = dict(
        checkpoint_id=checkpoint.id,
        run_id=run.id,
        evalset_id=evalset.id,
        step=100,
        checkpoint_hash=checkpoint.content_hash,
        evalset_hash=evalset.content_hash,
    )
    metrics = {"all": {"loss": 2.0, "tokens": 30, "examples": 3}, "a2t": {"loss": 2.0, "tokens": 30, "examples": 3}}
    imported = registry.add_eval_result(source="import", metrics=metrics, path="/runs/r1/eval_step100.json", **common)
    first = registry.add_eval_result(source="evaluator", metrics=metrics, **common)
    second = registry.add_eval_result(source="evaluator", metrics=metrics, loss_all=1.5, **common)

    assert imported.loss_all == 2.0 and second.loss_all == 1.5
    assert registry.latest_result(EvalKey(checkpoint.content_hash, HASH_A)) == second
    assert registry.latest_result(EvalKey(checkpoint.content_hash, HASH_A), source="import") == imported
    assert registry.latest_result(EvalKey(HASH_C, HASH_A)) is None
    assert registry.latest_result(EvalKey(checkpoint.content_hash, HASH_A, 5)) is None  # no result on that subset
    assert registry.latest_result(EvalKey(checkpoint.content_hash, HASH_A, 5), any_subset=True) == second
    assert [r.id for r in registry.list_eval_results(run_ids=[run.id])] == [imported.id, first.id, second.id]
    assert registry.list_eval_results(run_ids=[run.id + 1]) == []
    assert len(registry.list_eval_results(evalset_id=evalset.id, checkpoint_id=checkpoint.id)) == 3


def test_result_needs_a_known_source(registry: Registry) -> None:
    with pytest.raises(InvalidInput, match="source 'guess' is not one of evaluator, import"):
        registry.add_eval_result(source="guess", metrics={})
    assert registry.counts()["eval_results"] == 0


def test_row_stats_put_replaces(registry: Registry, run) -> None:
    checkpoint, _ = _checkpoint(registry, run.id, 100)
    assert registry.get_row_stats(checkpoint_id=checkpoint.id) is None
    first = registry.put_row_stats(checkpoint_id=checkpoint.id, stats={"audio": {"dead_rows": 0}})
    second = registry.put_row_stats(checkpoint_id=checkpoint.id, stats={"audio": {"dead_rows": 2}})
    assert second.id == first.id
    assert registry.get_row_stats(checkpoint_id=checkpoint.id).stats == {"audio": {"dead_rows": 2}}
    with pytest.raises(NotFound):
        registry.put_row_stats(checkpoint_id=checkpoint.id + 1, stats={})


# -- jobs ------------------------------------------------------------------------------------


def test_enqueue_deduplicates_unless_forced(registry: Registry, run) -> None:
    checkpoint, _ = _checkpoint(registry, run.id, 100)
    evalset, _ = _evalset(registry)
    job, created = registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id)
    assert created and job.status == "queued" and job.attempts == 0 and job.max_attempts == 3
    assert job.dedupe_key == f"{checkpoint.content_hash}:{HASH_A}"

    again, created = registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id)
    assert (again, created) == (job, False)

    forced, created = registry.enqueue_job(
        checkpoint_id=checkpoint.id, evalset_id=evalset.id, force=True, options={"max_tokens_per_batch": 4096}
    )
    assert created and forced.id != job.id and forced.options == {"max_tokens_per_batch": 4096, "force": True}
    assert [j.id for j in registry.list_jobs(status="queued")] == [job.id, forced.id]
    assert registry.get_job(id=forced.id) == forced


@pytest.mark.parametrize(
    "options, says",
    [
        ({"batch_size": 4}, "unknown job option 'batch_size'"),
        ({"max_example": 5}, "unknown job option 'max_example'"),
        ({"max_examples": "5"}, "max_examples must be an integer"),
        ({"max_examples": 0}, "max_examples must be an integer from 1"),
        ({"allow_mismatch": "yes"}, "allow_mismatch must be true or false"),
        ({"connector_builder": "os.system"}, "connector_builder must be package.module:function"),
    ],
)
def test_an_unknown_or_mistyped_job_option_is_refused_at_enqueue(registry: Registry, run, options, says) -> None:
    checkpoint, _ = _checkpoint(registry, run.id, 100)
    evalset, _ = _evalset(registry)
    with pytest.raises(InvalidInput, match=says):
        registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id, options=options)
    assert registry.counts()["eval_jobs"] == 0


def test_job_options_are_stored_as_what_differs_from_the_defaults(registry: Registry, run) -> None:
    from registry.job_options import JobOptions

    checkpoint, _ = _checkpoint(registry, run.id, 100)
    evalset, _ = _evalset(registry)
    opts = JobOptions(max_examples=8, connector_builder="my_pkg.builders:build")
    job, _ = registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id, options=opts)
    assert job.options == {"max_examples": 8, "connector_builder": "my_pkg.builders:build"}
    assert job.dedupe_key.endswith(":n8") and JobOptions.parse(job.options) == opts


def test_failed_job_does_not_block_a_new_one(registry: Registry, run) -> None:
    checkpoint, _ = _checkpoint(registry, run.id, 100)
    evalset, _ = _evalset(registry)
    job, _ = registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id)
    with registry.engine.begin() as connection:
        connection.execute(update(M.EvalJob).values(status="failed"))
    retry, created = registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id)
    assert created and retry.id != job.id
    assert [j.id for j in registry.list_jobs(status="failed")] == [job.id]


def test_invalid_checkpoint_cannot_be_enqueued(registry: Registry, run) -> None:
    checkpoint, _ = _checkpoint(registry, run.id, 100, status="invalid", reason="token_space.json missing")
    evalset, _ = _evalset(registry)
    with pytest.raises(
        InvalidInput, match=r"checkpoint_100 cannot be evaluated: it is invalid \(token_space.json missing\)"
    ):
        registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id)
    with pytest.raises(NotFound, match="no eval set with id"):
        registry.enqueue_job(checkpoint_id=checkpoint.id, evalset_id=evalset.id + 1)
    assert registry.counts()["eval_jobs"] == 0


# -- whole-registry views --------------------------------------------------------------------


def test_snapshot_sees_every_change(registry: Registry, run) -> None:
    empty_but_run = registry.snapshot()
    assert [row[1:3] for row in empty_but_run["runs"]] == [("r1", "/runs/r1")]
    checkpoint, _ = _checkpoint(registry, run.id, 100)
    after = registry.snapshot()
    assert after != empty_but_run
    assert after == registry.snapshot()
    _checkpoint(registry, run.id, 100, meta={"dtype": "float32"})
    assert registry.snapshot() != after
    assert registry.counts()["checkpoints"] == 1


# -- engine and URL handling -----------------------------------------------------------------


def test_sqlite_pragmas(tmp_path) -> None:
    with Registry(f"sqlite:///{tmp_path / 'sub' / 'r.db'}") as registry:
        with registry.engine.connect() as connection:
            values = [
                connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            ]
    assert values == ["wal", 30000, 1, 1]  # synchronous 1 = NORMAL


def test_unreachable_server_is_a_one_line_store_error_without_password() -> None:
    with pytest.raises(StoreError) as caught:
        Registry("postgresql://evalboard:s3cret@127.0.0.1:1/evalboard")
    message = str(caught.value)
    assert "\n" not in message and "s3cret" not in message
    assert message.startswith("registry postgresql+psycopg://evalboard:***@127.0.0.1:1/evalboard: OperationalError")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_unusable_urls_are_invalid_input(url: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        Registry(url)


def test_postgres_spellings_use_psycopg3() -> None:
    for url in ("postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg2://u@h/db"):
        assert normalize_url(url).drivername == "postgresql+psycopg"
    assert mask_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_registry_defaults_to_settings_url(tmp_path) -> None:
    from registry.settings import Settings

    with Registry(settings=Settings(home=tmp_path / "home")) as registry:
        assert registry.dialect == "sqlite"
        assert registry.url == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    assert (tmp_path / "home" / "registry.db").is_file()


# -- network filesystems ---------------------------------------------------------------------

FAKE_MOUNTS = r"""/dev/vda / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,relatime,vers=4.2 0 0
/dev/vdb /mnt/shared/local ext4 rw 0 0
//nas/team /mnt/team\040drive cifs rw 0 0
sshfs#me@host: /home/me/remote fuse.sshfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/mnt/shared/runs/registry.db", "nfs4"),
        ("/mnt/shared", "nfs4"),
        ("/mnt/shared/local/registry.db", None),  # a local disk mounted inside the share
        ("/mnt/sharedother/registry.db", None),  # same prefix, different folder
        ("/mnt/team drive/registry.db", "cifs"),
        ("/home/me/remote/r.db", "fuse.sshfs"),
        ("/var/tmp/registry.db", None),
    ],
)
def test_network_filesystem_detection(path: str, expected: str | None) -> None:
    assert network_filesystem(path, FAKE_MOUNTS) == expected


def test_sqlite_on_network_filesystem_is_refused(tmp_path, monkeypatch) -> None:
    mounts = f"/dev/vda / ext4 rw 0 0\nserver:/export {tmp_path.resolve()} nfs rw 0 0\n"
    monkeypatch.setattr("registry.engine._read_mounts", lambda: mounts)
    with pytest.raises(InvalidInput, match=r"on a nfs network filesystem.*EVALBOARD_DB=postgresql://"):
        Registry(f"sqlite:///{tmp_path / 'home' / 'registry.db'}")
    assert not (tmp_path / "home").exists()  # refused before creating anything


def test_sqlite_read_transactions_do_not_take_the_write_lock(tmp_path) -> None:
    """A dashboard reading must not queue behind (or block) a worker's write transaction."""
    with Registry(f"sqlite:///{tmp_path / 'r.db'}") as registry:
        with registry.engine.begin() as writer:  # holds the write lock (BEGIN IMMEDIATE)
            writer.execute(
                text(
                    "INSERT INTO token_spaces (abi_hash, text_vocab_size, vocab_size_total, "
                    "spec, codec_versions, first_path) VALUES ('x', 1, 2, '{}', '{}', 'p')"
                )
            )
            assert registry.counts()["token_spaces"] == 0  # a reader still gets through
        assert registry.counts()["token_spaces"] == 1

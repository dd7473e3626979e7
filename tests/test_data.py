"""Data preparation: sources, tokenizing + packing, reuse, bad input, PackedDataset, the CLI."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import loads_experiment
from engine.contract import RunLayout, read_json
from engine.data import PackedDataset, pack, read_meta, split_documents, split_tokens
from engine.data import builtin as bi
from engine.data.prepare import prepare
from engine.data.progress import PrepareProgress
from engine.data.sources import resolve_corpus
from engine.data.tokenizer import capped_texts, load_tokenizer, train_bpe
from engine.errors import UserError

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the of and to in is was for that with as on by at from his her an which are this be has not "
         "or have had were it their one all its also first new two after who been more other into time "
         "when can river city music school water light garden winter letter number people world").split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Distinct pseudo-English documents of varying length ('doc 17: ...')."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
                     for _ in range(rng.randint(1, 12))]
        out.append(f"doc {i}: " + " ".join(sentences))
    return out


def write_jsonl(path: Path, docs: list[str], field: str = "text", **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({field: d, **extra}) + "\n")
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE trained here on generated text (no download)."""
    d = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_bpe(capped_texts(make_docs(300, seed=99)), 320, d)
    return d


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(str(tok_dir))


def experiment(tmp_path: Path, tok_dir: Path | None, data: str, model: str | None = None, name: str = "t"):
    model = model or f'path = "{tok_dir}"'
    if "seq_length" not in data:  # prepare checks that each split holds a window; these splits are small
        data += "\nseq_length = 16"
    text = f'name = "{name}"\nruns_dir = "{tmp_path / "runs"}"\n[model]\n{model}\n[data]\n{data}\n'
    return loads_experiment(text, source=str(tmp_path / "exp.toml"))


def run_prepare(exp, logs: list[str] | None = None) -> dict:
    return prepare(exp, RunLayout(exp.run_dir), log=(logs.append if logs is not None else lambda _m: None), tty=False)


def expected_stream(tok, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        if d.strip():
            out += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def doc_tokens(data_dir: Path, split: str) -> list[tuple[int, ...]]:
    toks, offs = split_tokens(data_dir, split), split_documents(data_dir, split)
    return [tuple(toks[offs[i]:offs[i + 1]].tolist()) for i in range(len(offs) - 1)]


def leftovers(data_dir: Path) -> list[str]:
    """Anything prepare may have half-written (status/log files of the stage runner are fine)."""
    if not data_dir.exists():
        return []
    return sorted(p.name for p in data_dir.iterdir() if p.name not in ("status.json", "stdout.log"))


# ---- packing ----------------------------------------------------------------------------


def test_packed_file_is_the_documents_each_followed_by_eos(tmp_path, tok_dir, tok):
    docs = make_docs(40)
    docs[5], docs[9] = "", "   \n "  # empty records are skipped, not packed as a lone EOS
    val = make_docs(6, seed=1)
    write_jsonl(tmp_path / "train.jsonl", docs)
    write_jsonl(tmp_path / "val.jsonl", val)
    exp = experiment(tmp_path, tok_dir, 'train_files = ["train.jsonl"]\nvalidation_files = ["val.jsonl"]')
    os.chdir(tmp_path)  # relative paths resolve against the current directory
    meta = run_prepare(exp)
    d = RunLayout(exp.run_dir).data_dir
    want = expected_stream(tok, docs)
    assert split_tokens(d, "train").tolist() == want
    assert split_tokens(d, "validation").tolist() == expected_stream(tok, val)
    offsets = split_documents(d, "train")
    assert offsets[0] == 0 and offsets[-1] == len(want) and len(offsets) == 39  # 38 documents
    assert all(split_tokens(d, "train")[offsets[1:] - 1] == tok.eos_token_id)
    assert meta == read_meta(d)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(tok) == 320
    assert meta["eos_token_id"] == tok.eos_token_id and meta["bos_token_id"] == tok.bos_token_id
    assert meta["splits"]["train"] == {"tokens": len(want), "documents": 38, "held_out": False, "truncated": False}
    assert "test" not in meta["splits"] and not (d / "test.bin").exists()
    assert len(meta["tokenizer_hash"]) == 16
    assert leftovers(d) == sorted(["meta.json", "train.bin", "train.idx.npy", "validation.bin",
                                   "validation.idx.npy"])


def test_max_tokens_cuts_the_training_stream_exactly(tmp_path, tok_dir, tok):
    docs = make_docs(60)
    write_jsonl(tmp_path / "train.jsonl", docs)
    write_jsonl(tmp_path / "val.jsonl", docs[:3])
    exp = experiment(tmp_path, tok_dir, f'train_files = ["{tmp_path}/train.jsonl"]\n'
                     f'validation_files = ["{tmp_path}/val.jsonl"]\nmax_tokens = 777')
    meta = run_prepare(exp)
    d = RunLayout(exp.run_dir).data_dir
    assert split_tokens(d, "train").tolist() == expected_stream(tok, docs)[:777]
    assert meta["splits"]["train"]["truncated"] and split_documents(d, "train")[-1] == 777


# ---- sources ----------------------------------------------------------------------------


def _records(tmp_path: Path, data: str) -> dict[str, list[str]]:
    exp = experiment(tmp_path, None, data, model='path = "unused"')
    corpus = resolve_corpus(exp.data, exp.source)
    return {s: [r for p in parts for r in p.records()] for s, parts in corpus.parts().items()}


def test_jsonl_json_txt_parquet_gz_and_glob_sources_read_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(12)
    write_jsonl(tmp_path / "a.jsonl", docs, field="body", source="x")
    (tmp_path / "b.json").write_text(json.dumps([{"body": d} for d in docs]))
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n")
    pq.write_table(pa.table({"body": docs, "n": list(range(12))}), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"body": d}) + "\n" for d in docs)
    for name in ("a.jsonl", "b.json", "c.txt", "d.parquet", "e.jsonl.gz"):
        got = _records(tmp_path, f'train_files = ["{tmp_path / name}"]\ntext_field = "body"')
        assert got == {"train": docs}, name
    for i in range(3):  # a glob: files in sorted order
        write_jsonl(tmp_path / "parts" / f"p{i}.jsonl", docs[4 * i:4 * i + 4], field="body")
    got = _records(tmp_path, f'train_files = ["{tmp_path}/parts/*.jsonl"]\ntest_files = ["{tmp_path}/c.txt"]\n'
                   'text_field = "body"')
    assert got["test"] == docs  # .txt has no fields: text_field does not apply
    assert got == {"train": docs, "test": docs}


def test_hub_dataset_path_through_datasets_load_dataset(tmp_path, tok_dir, tok, monkeypatch):
    """`dataset = <name>` goes through datasets.load_dataset; a local dataset folder needs no network."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # not the user's cache
    ds_dir = tmp_path / "mini_ds"
    write_jsonl(ds_dir / "train.jsonl", make_docs(20))
    write_jsonl(ds_dir / "test.jsonl", make_docs(4, seed=3))
    exp = experiment(tmp_path, tok_dir, f'dataset = "{ds_dir}"\nvalidation_fraction = 0.1')
    meta = run_prepare(exp)
    assert meta["splits"]["test"]["documents"] == 4 and not meta["splits"]["test"]["held_out"]
    assert meta["splits"]["validation"]["documents"] == 2 and meta["splits"]["validation"]["held_out"]
    assert meta["splits"]["train"]["documents"] == 18
    assert (tmp_path / "hf_cache").is_dir()


def test_builtin_stdlib_docs_is_several_mb_of_english_offline_and_deterministic(tmp_path, tok_dir):
    before = set(sys.modules)
    docs = bi.stdlib_documents()
    assert not {"antigravity", "this", "turtle", "tkinter"} & (set(sys.modules) - before)  # parsed, not imported
    size = sum(len(d.encode()) for d in docs)
    assert size > 3_000_000, size
    text = " ".join(docs[:200])
    assert text.count(" the ") > 1000 and "Return" in text
    root = bi.stdlib_root()
    files = bi.stdlib_files(root)
    first = [d for f in files[:40] for d in bi.file_documents(f, root)]
    assert list(docs[:len(first)]) == first  # a fixed order: file by file
    exp = experiment(tmp_path, tok_dir, 'dataset = "builtin:stdlib-docs"\nmax_tokens = 20000')
    meta = run_prepare(exp)
    assert meta["splits"]["train"]["tokens"] == 20000
    assert meta["splits"]["validation"]["documents"] == round(0.01 * len(docs))


def test_held_out_validation_and_test_are_disjoint_seeded_documents(tmp_path, tok_dir, tok):
    docs = make_docs(50)
    write_jsonl(tmp_path / "train.jsonl", docs)
    data = f'train_files = ["{tmp_path}/train.jsonl"]\nvalidation_fraction = 0.2\ntest_fraction = 0.1'
    exp = experiment(tmp_path, tok_dir, data)
    meta = run_prepare(exp)
    d = RunLayout(exp.run_dir).data_dir
    split_docs = {s: doc_tokens(d, s) for s in ("train", "validation", "test")}
    assert [len(v) for v in split_docs.values()] == [35, 10, 5]
    assert meta["splits"]["validation"]["held_out"] and meta["splits"]["test"]["held_out"]
    every = [tuple(tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for x in docs]
    got = [x for v in split_docs.values() for x in v]
    assert sorted(got) == sorted(every)  # all documents, each in exactly one split
    assert split_docs["train"] == [x for x in every if x in set(split_docs["train"])]  # file order kept
    other = experiment(tmp_path, tok_dir, data + "\nseed = 7", name="t2")
    run_prepare(other)
    assert doc_tokens(RunLayout(other.run_dir).data_dir, "validation") != split_docs["validation"]


# ---- reuse --------------------------------------------------------------------------------


def test_unchanged_inputs_are_reused_and_changes_rebuild(tmp_path, tok_dir, tok):
    f = write_jsonl(tmp_path / "train.jsonl", make_docs(30))
    exp = experiment(tmp_path, tok_dir, f'train_files = ["{f}"]')
    d = RunLayout(exp.run_dir).data_dir
    run_prepare(exp)
    stamp = (d / "train.bin").stat().st_mtime_ns
    logs: list[str] = []
    run_prepare(exp, logs)
    assert any("reusing" in line for line in logs) and (d / "train.bin").stat().st_mtime_ns == stamp

    write_jsonl(f, make_docs(31))  # the source changed (size + mtime)
    logs.clear()
    meta = run_prepare(exp, logs)
    assert not any("reusing" in line for line in logs)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["validation"]["documents"] == 31

    for changed in ("seed = 5", "validation_fraction = 0.3", "max_tokens = 100"):
        logs.clear()
        exp2 = experiment(tmp_path, tok_dir, f'train_files = ["{f}"]\n{changed}')
        run_prepare(exp2, logs)
        assert not any("reusing" in line for line in logs), changed
    other_tok = tmp_path / "tok2"
    train_bpe(capped_texts(make_docs(100, seed=5)), 300, other_tok)
    logs.clear()
    meta = run_prepare(experiment(tmp_path, tok_dir, f'train_files = ["{f}"]', model=f'path = "{other_tok}"'), logs)
    assert not any("reusing" in line for line in logs) and meta["vocab_size"] == 300
    (d / "train.bin").write_bytes(b"\0\0")  # damaged files are not reused either
    logs.clear()
    run_prepare(experiment(tmp_path, tok_dir, f'train_files = ["{f}"]', model=f'path = "{other_tok}"'), logs)
    assert not any("reusing" in line for line in logs)


def test_trained_tokenizer_is_saved_and_reused(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", make_docs(80))
    model = 'init = "scratch"\narch = {model_type = "llama"}\ntokenizer_train_vocab = 300\n[finetune]\nsteps = 1'
    data = f'train_files = ["{f}"]\nseq_length = 16'
    text = f'name = "tt"\nruns_dir = "{tmp_path / "runs"}"\n[data]\n{data}\n[model]\n{model}\n'
    exp = loads_experiment(text, source=str(tmp_path / "exp.toml"))
    layout = RunLayout(exp.run_dir)
    meta = run_prepare(exp)
    tok = load_tokenizer(str(layout.tokenizer_dir))
    assert meta["tokenizer"] == str(layout.tokenizer_dir) and meta["vocab_size"] == len(tok) == 300
    logs: list[str] = []
    assert run_prepare(exp, logs) == meta and any("reusing" in line for line in logs)
    (layout.tokenizer_dir / "tokenizer.json").unlink()  # a broken tokenizer dir is rebuilt, not reused
    logs.clear()
    run_prepare(exp, logs)
    assert not any("reusing" in line for line in logs) and (layout.tokenizer_dir / "tokenizer.json").exists()


# ---- bad input ------------------------------------------------------------------------------


def _fails(exp, pattern: str) -> str:
    with pytest.raises(UserError) as ei:
        run_prepare(exp)
    msg = str(ei.value)
    assert "\n" not in msg
    assert pattern in msg, msg
    assert leftovers(RunLayout(exp.run_dir).data_dir) == []
    return msg


def test_missing_file_and_empty_glob(tmp_path, tok_dir):
    msg = _fails(experiment(tmp_path, tok_dir, 'train_files = ["nope/train.jsonl"]'),
                 "data.train_files: file not found: 'nope/train.jsonl'")
    assert str(tmp_path) in msg  # says where it looked
    _fails(experiment(tmp_path, tok_dir, f'train_files = ["{tmp_path}/*.parquet"]'),
           f"data.train_files: no file matches '{tmp_path}/*.parquet'")
    (tmp_path / "x.csv").write_text("text\nhello\n")
    _fails(experiment(tmp_path, tok_dir, f'train_files = ["{tmp_path}/x.csv"]'), "is not a supported file type")


def test_empty_dataset(tmp_path, tok_dir):
    (tmp_path / "empty.jsonl").write_text("")
    _fails(experiment(tmp_path, tok_dir, f'train_files = ["{tmp_path}/empty.jsonl"]'), "the dataset is empty")
    write_jsonl(tmp_path / "blank.jsonl", ["", "  ", ""])
    _fails(experiment(tmp_path, tok_dir, f'train_files = ["{tmp_path}/blank.jsonl"]\n'
                      f'validation_files = ["{tmp_path}/blank.jsonl"]'), "the dataset is empty")


def test_text_field_that_is_not_there_names_the_fields(tmp_path, tok_dir):
    write_jsonl(tmp_path / "t.jsonl", make_docs(5), field="content", id=3)
    _fails(experiment(tmp_path, tok_dir, f'train_files = ["{tmp_path}/t.jsonl"]'),
           "data.text_field: 'text' is not a field of " f"{tmp_path}/t.jsonl:1; fields there: content, id")


def test_tokenizer_that_cannot_be_loaded(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", make_docs(5))
    bad = tmp_path / "broken_tok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    exp = experiment(tmp_path, None, f'train_files = ["{tmp_path}/t.jsonl"]', model=f'path = "{bad}"')
    _fails(exp, f"tokenizer '{bad}': {bad}/tokenizer.json is not valid JSON")  # named by the up-front check


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, tok_dir, monkeypatch):
    write_jsonl(tmp_path / "t.jsonl", make_docs(20))
    exp = experiment(tmp_path, tok_dir, f'train_files = ["{tmp_path}/t.jsonl"]')
    real_open = open

    def full_disk_open(path, mode="r", *a, **k):
        if str(path).endswith(".bin") and "w" in mode:
            return real_open("/dev/full", mode, *a, **k)  # every write fails with ENOSPC
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(pack, "open", full_disk_open, raising=False)
    assert os.path.exists("/dev/full")
    msg = _fails(exp, "disk full while writing")
    assert "nothing was kept" in msg


def test_failed_rebuild_keeps_the_previous_result(tmp_path, tok_dir):
    f = write_jsonl(tmp_path / "t.jsonl", make_docs(20))
    exp = experiment(tmp_path, tok_dir, f'train_files = ["{f}"]')
    good = run_prepare(exp)
    write_jsonl(f, make_docs(20), field="content")
    with pytest.raises(UserError, match="is not a field"):
        run_prepare(exp)
    d = RunLayout(exp.run_dir).data_dir
    assert read_meta(d) == good and len(split_tokens(d, "train")) == good["splits"]["train"]["tokens"]
    assert not list(d.glob(".build-*"))


# ---- PackedDataset ------------------------------------------------------------------------


def packed_dir(tmp_path: Path, n_tokens: int, split: str = "train") -> Path:
    d = tmp_path / "packed"
    d.mkdir(exist_ok=True)
    (np.arange(n_tokens) % 60000).astype(np.uint16).tofile(d / f"{split}.bin")
    np.save(d / f"{split}.idx.npy", np.array([0, n_tokens]))
    (d / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 60000, "eos_token_id": 0,
                                             "splits": {split: {"tokens": n_tokens, "documents": 1}}}))
    return d


def test_windows_cover_the_stream_exactly_once_per_epoch(tmp_path):
    L, n = 16, 16 * 23 + 5  # 23 windows and a short tail that no window can use
    ds = PackedDataset(packed_dir(tmp_path, n), "train", L, seed=3)
    stream = np.arange(n) % 60000
    assert ds.num_windows == len(ds) == 23
    for epoch in range(2):
        seen = np.zeros(n, dtype=int)
        order = []
        for k in range(epoch * 23, (epoch + 1) * 23):
            w = ds[k]
            assert w.dtype == np.int64 and w.shape == (L + 1,)
            i = ds.window_index(k)
            assert (w == stream[i * L:i * L + L + 1]).all()
            seen[i * L + 1:i * L + L + 1] += 1  # the positions this window predicts
            order.append(i)
        assert (seen[1:23 * L + 1] == 1).all() and seen.sum() == 23 * L
        assert order != sorted(order)  # shuffled
    assert [ds.window_index(k) for k in range(23)] != [ds.window_index(k) for k in range(23, 46)]


def test_resume_from_an_offset_continues_the_same_order(tmp_path):
    d = packed_dir(tmp_path, 8 * 30 + 1)
    full = PackedDataset(d, "train", 8, seed=11)
    it = iter(full)
    first = [next(it) for _ in range(70)]  # crosses two epoch boundaries
    resumed = PackedDataset(d, "train", 8, seed=11, start=45)
    it2 = iter(resumed)
    for k in range(45, 70):
        assert (next(it2) == first[k]).all()
    b = next(PackedDataset(d, "train", 8, seed=11).batches(4, start=45))
    assert b.shape == (4, 9) and (b == np.stack(first[45:49])).all()
    other = PackedDataset(d, "train", 8, seed=12)
    assert [other.window_index(k) for k in range(30)] != [full.window_index(k) for k in range(30)]


def test_ranks_get_disjoint_samples_that_cover_everything(tmp_path):
    d = packed_dir(tmp_path, 10 * 24 + 1)  # 24 windows
    for world in (1, 2, 3, 4):
        per_rank = [PackedDataset(d, "train", 10, seed=5, rank=r, world_size=world) for r in range(world)]
        for epoch in range(2):
            sets = [{ds.window_index(k) for k in range(epoch * len(ds), (epoch + 1) * len(ds))} for ds in per_rank]
            assert all(len(s) == 24 // world for s in sets)
            assert set().union(*sets) == set(range(24)) and sum(map(len, sets)) == 24
    uneven = [PackedDataset(d, "train", 10, seed=5, rank=r, world_size=5) for r in range(5)]
    sets = [{ds.window_index(k) for k in range(len(ds))} for ds in uneven]
    assert all(len(s) == 4 for s in sets) and len(set().union(*sets)) == 20  # 4 of 24 skipped this epoch


def test_a_split_too_small_for_one_window_is_a_clear_error(tmp_path):
    d = packed_dir(tmp_path, 20)
    with pytest.raises(UserError, match="too few for 1 process"):
        PackedDataset(d, "train", 32)
    with pytest.raises(UserError, match="no 'validation' split was prepared"):
        PackedDataset(d, "validation", 8)
    with pytest.raises(UserError, match="run `slimlab-engine prepare FILE` first"):
        PackedDataset(tmp_path / "nowhere", "train", 8)


def test_progress_is_plain_log_lines_off_a_terminal(monkeypatch):
    import engine.data.progress as pr

    monkeypatch.setattr(pr, "LOG_EVERY_S", 0.0)
    lines: list[str] = []
    status: list[dict] = []
    monkeypatch.setattr(pr, "STATUS_EVERY_S", 0.0)
    p = PrepareProgress(10, log=lines.append, status=lambda **kw: status.append(kw), tty=False)
    p.advance(records=5, tokens=1234, split="train")
    p.close()
    assert "50.0% of documents read, 1,234 tokens" in lines[0] and "tokens/s" in lines[0]
    assert status[-1]["step"] == 100 and status[-1]["tokens"] == 1234


# ---- the command line ---------------------------------------------------------------------


@pytest.mark.slow
def test_cli_prepare_end_to_end_with_a_trained_tokenizer(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", make_docs(200))
    toml = tmp_path / "exp.toml"
    toml.write_text(f'name = "cli"\nruns_dir = "{tmp_path / "runs"}"\n[model]\ninit = "scratch"\n'
                    'arch = {model_type = "llama", hidden_size = 32}\ntokenizer_train_vocab = 300\n'
                    '[data]\ntrain_files = ["data/train.jsonl"]\nseq_length = 32\n[finetune]\nsteps = 1\n')
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "engine", "prepare", str(toml)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("prepare: done") and "tokens/s" in lines[-1] and "train " in lines[-1]
    layout = RunLayout(tmp_path / "runs" / "cli")
    meta = read_meta(layout.data_dir)
    assert meta["vocab_size"] == 300 and meta["tokenizer"] == str(layout.tokenizer_dir)
    assert read_json(layout.stage_status_file("prepare"))["state"] == "succeeded"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(layout.tokenizer_dir)
    assert len(tok) == 300 and None not in (tok.eos_token_id, tok.bos_token_id, tok.unk_token_id, tok.pad_token_id)
    docs = make_docs(200)
    n_train = meta["splits"]["train"]["documents"]
    assert n_train == 198 and meta["splits"]["validation"]["documents"] == 2
    assert len(split_tokens(layout.data_dir, "train")) == meta["splits"]["train"]["tokens"] > 0
    assert PackedDataset(layout.data_dir, "train", 32)[0].max() < 300
    first = split_tokens(layout.data_dir, "train")[:split_documents(layout.data_dir, "train")[1]].tolist()
    assert tok.decode(first[:-1]) in docs[:2]

    (tmp_path / "data" / "train.jsonl").unlink()
    r3 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r3.returncode == 2
    assert r3.stderr.strip() == ("error: data.train_files: file not found: 'data/train.jsonl' "
                                 f"(looked in {tmp_path}); check the path")
    assert read_json(layout.stage_status_file("prepare"))["state"] == "failed"


def test_a_prepared_folder_is_used_as_is_after_checks(tmp_path, tok_dir, tok):
    f = write_jsonl(tmp_path / "train.jsonl", make_docs(30))
    src = experiment(tmp_path, tok_dir, f'train_files = ["{f}"]', name="src")
    made = run_prepare(src)
    folder = RunLayout(src.run_dir).data_dir
    use = experiment(tmp_path, tok_dir, f'prepared = "{folder}"', name="gpu")
    meta = run_prepare(use)
    d = RunLayout(use.run_dir).data_dir
    assert meta["splits"] == made["splits"] and meta["prepared_from"] == str(folder)
    for split in ("train", "validation"):
        assert (split_tokens(d, split) == split_tokens(folder, split)).all()
    logs: list[str] = []
    run_prepare(use, logs)
    assert any("reusing" in line for line in logs)

    other_tok = tmp_path / "tok2"
    train_bpe(capped_texts(make_docs(50, seed=4)), 300, other_tok)
    wrong = experiment(tmp_path, None, f'prepared = "{folder}"', model=f'path = "{other_tok}"', name="w")
    _fails(wrong, "was tokenized by another tokenizer")
    _fails(experiment(tmp_path, tok_dir, 'prepared = "no/such/dir"', name="w2"), "data.prepared: no folder 'no/such/dir'")
    with open(folder / "train.bin", "ab") as fh:
        fh.write(b"\0\0")
    _fails(experiment(tmp_path, tok_dir, f'prepared = "{folder}"', name="w3"), "copy the whole folder again")


def test_seq_length_longer_than_the_data_is_a_user_error_before_the_data_is_kept(tmp_path, tok_dir):
    """Found by the finetune stage before, after prepare had written the data."""
    write_jsonl(tmp_path / "train.jsonl", make_docs(40))
    write_jsonl(tmp_path / "val.jsonl", make_docs(1, seed=5))
    files = (f'train_files = ["{tmp_path / "train.jsonl"}"]\n'
             f'validation_files = ["{tmp_path / "val.jsonl"}"]\n')
    exp = experiment(tmp_path, tok_dir, files + "seq_length = 2048\n")
    with pytest.raises(UserError, match=r"data.seq_length: 2048 is longer than the (train|validation) split "
                                        r"\(\d+ tokens\); set seq_length to at most \d+"):
        run_prepare(exp)
    assert leftovers(RunLayout(exp.run_dir).data_dir) == []
    small = experiment(tmp_path, tok_dir, files + "seq_length = 16\n")
    run_prepare(small)  # fits: kept; then reused with a longer seq_length, the check still runs
    with pytest.raises(UserError, match="data.seq_length: 2048"):
        run_prepare(exp)


def test_a_missing_tokenizer_folder_is_said_as_such_not_as_a_bad_hub_id(tmp_path):
    """transformers answered a missing ./folder with the hub's "Repo id must be in the form ..."."""
    with pytest.raises(UserError, match=r"no such folder '\./nope/tok'") as e:
        load_tokenizer("./nope/tok")
    assert "Repo id" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))

"""ICL tasks: demonstrations ``x -> y`` with label words.

A :class:`Task` is a list of :class:`Example` (input text, output text, optional class index)
plus the prompt :class:`~interp.prompts.Template` it is usually shown with.

Bundled tasks (written for this project, shipped in ``interp/data``):
``country-capital``, ``present-past``, ``singular-plural``, ``english-french`` (word pairs) and
``sentiment`` (short sentences, two labels).  ``load_task(name)`` returns them.

Loaders for user data: :func:`load_jsonl`, :func:`load_csv`, :func:`load_dataset_dir` (a folder
with ``train.jsonl`` / ``test.jsonl`` / ``meta.json``) and :func:`load_hf_dataset` (network).
``load_task(name)`` also finds ``$ICL_INTERP_DATA/classification/<name>`` when that variable is set.
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

from interp.prompts import Template


@dataclass(frozen=True)
class Example:
    """One demonstration or query: ``input -> output``.

    ``output`` is the answer text without a leading space (the template adds it).
    ``label`` is the class index for classification tasks, ``None`` for word tasks.
    """

    input: str
    output: str
    label: int | None = None


@dataclass
class Task:
    """A named set of examples and the template they are shown with.

    kind ``"classification"``: every example has ``label`` in ``range(len(label_words))`` and
    ``output == label_words[label]``; scored by label-word log-probabilities.
    kind ``"generation"``: free-form outputs; scored by first-token exact match of ``" " + output``.
    """

    name: str
    examples: list[Example]
    kind: Literal["classification", "generation"] = "generation"
    label_words: list[str] | None = None
    template: Template = field(default_factory=Template)
    #: A separate test split (datasets with train/test files): when set, prompt builders draw the
    #: n queries from it and the demonstrations from ``examples`` (the train split).
    test_examples: list[Example] | None = None
    #: How multi-token label words are scored when a prompt builder is not told
    #: (``"first-token"`` / ``"sequence"``; None: single-token words only).
    label_policy: str | None = None
    #: Where the task was read from ("bundled:sentiment", "folder:/abs/path", "file:/abs/path").
    source: str | None = None

    def __len__(self) -> int:
        return len(self.examples)


# --------------------------------------------------------------------------------------------
# Bundled tasks
# --------------------------------------------------------------------------------------------

BUNDLED_TASKS: tuple[str, ...] = (
    "country-capital",
    "present-past",
    "singular-plural",
    "english-french",
    "sentiment",
)

#: Template of the bundled ``sentiment`` task (also a sensible choice for other review data).
SENTIMENT_TEMPLATE = Template(
    input_prefix="Review:", output_prefix="Sentiment:", in_out_sep="\n", demo_sep="\n\n"
)


def load_task(name: str) -> Task:
    """Load a bundled task by name (see :data:`BUNDLED_TASKS`).

    Word tasks are ``kind="generation"`` with the default :class:`Template` (``"Q: x\\nA: y"``);
    ``sentiment`` is ``kind="classification"`` with ``label_words=["negative", "positive"]``.
    The data is read with :mod:`importlib.resources`, so it works from an installed wheel.
    """
    if name not in BUNDLED_TASKS:
        data_root = os.environ.get("ICL_INTERP_DATA")
        if data_root and (Path(data_root) / "classification" / name / "train.jsonl").exists():
            return load_dataset_dir(Path(data_root) / "classification" / name)
        raise ValueError(
            f"unknown task {name!r}; bundled tasks are {', '.join(BUNDLED_TASKS)}. "
            "For your own data use load_jsonl(path), load_csv(path) or load_dataset_dir(folder), "
            "or set ICL_INTERP_DATA to a folder holding classification/<name>/."
        )
    resource = resources.files("interp") / "data" / f"{name}.json"
    data = json.loads(resource.read_text(encoding="utf-8"))
    label_words = data.get("label_words")
    if label_words is None:
        examples = [Example(e["input"], e["output"]) for e in data["examples"]]
        return Task(name=name, examples=examples, kind="generation", template=Template())
    label_words = list(label_words)
    examples = [Example(e["input"], label_words[e["label"]], e["label"]) for e in data["examples"]]
    return Task(
        name=name,
        examples=examples,
        kind="classification",
        label_words=label_words,
        template=SENTIMENT_TEMPLATE,
    )


# --------------------------------------------------------------------------------------------
# Loaders for user data
# --------------------------------------------------------------------------------------------


def _as_label(value: object, where: str) -> int:
    """Class index from an int or a string of digits (CSV cells are strings)."""
    if isinstance(value, bool):
        raise ValueError(
            f"{where}: label {value!r} is a bool; labels must be class indices 0..k-1"
        )
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(
        f"{where}: label {value!r} is not an integer class index; map your labels to 0..k-1 "
        "and give their names with label_words=[...]"
    )


def _task_from_records(
    records: Sequence[dict],
    source: str,
    *,
    input_key: str | None,
    output_key: str | None,
    label_key: str | None,
    name: str | None,
    label_words: Sequence[str] | None,
    template: Template | None,
) -> Task:
    """Shared body of :func:`load_jsonl` and :func:`load_csv` (see there for the shapes)."""
    if not records:
        raise ValueError(f"{source}: no records found")
    first = records[0]
    keys = sorted(first)

    # Input field(s).
    if input_key is not None:
        input_keys: tuple[str, ...] = (input_key,)
    elif "premise" in first and "hypothesis" in first:
        input_keys = ("premise", "hypothesis")
    elif "input" in first:
        input_keys = ("input",)
    elif "text" in first:
        input_keys = ("text",)
    else:
        raise ValueError(
            f"{source}: cannot find the input field in record keys {keys}; expected 'input', "
            "'text' or 'premise'+'hypothesis', or pass input_key=..."
        )

    # Classification (label) or generation (output)?
    if label_key is not None and output_key is not None:
        raise ValueError(
            "pass either output_key (generation) or label_key (classification), not both"
        )
    if label_key is None and output_key is None:
        if "label" in first:
            label_key = "label"
        elif "output" in first:
            output_key = "output"
        else:
            raise ValueError(
                f"{source}: cannot find the answer field in record keys {keys}; expected 'output' "
                "(generation) or 'label' (classification), or pass output_key=... / label_key=..."
            )

    def get(rec: dict, key: str, i: int, arg: str) -> object:
        if key not in rec or rec[key] is None:
            raise ValueError(
                f"{source}: record {i} has no {key!r} field (keys: {sorted(rec)}); "
                f"fix the record or pass {arg}=... naming the right field"
            )
        return rec[key]

    inputs: list[str] = []
    for i, rec in enumerate(records):
        parts = [str(get(rec, k, i, "input_key")).strip() for k in input_keys]
        text = " ".join(parts)
        if not text:
            raise ValueError(f"{source}: record {i} has an empty input")
        inputs.append(text)

    task_name = name if name is not None else source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    tmpl = template if template is not None else Template()

    if output_key is not None:
        examples = []
        for i, (rec, text) in enumerate(zip(records, inputs)):
            out = str(get(rec, output_key, i, "output_key")).strip()
            if not out:
                raise ValueError(f"{source}: record {i} has an empty {output_key!r}")
            examples.append(Example(text, out))
        return Task(name=task_name, examples=examples, kind="generation", template=tmpl)

    assert label_key is not None
    labels = [_as_label(get(rec, label_key, i, "label_key"), f"{source}: record {i}")
              for i, rec in enumerate(records)]
    if label_words is None:
        names: dict[int, str] = {}
        for i, (rec, lab) in enumerate(zip(records, labels)):
            if "label_name" not in rec:
                raise ValueError(
                    f"{source}: record {i} has a label but no 'label_name'; pass "
                    "label_words=[name of class 0, name of class 1, ...]"
                )
            ln = str(rec["label_name"]).strip()
            if names.setdefault(lab, ln) != ln:
                raise ValueError(
                    f"{source}: label {lab} has two names ({names[lab]!r} and {ln!r}); "
                    "pass label_words=[...] explicitly"
                )
        if sorted(names) != list(range(len(names))):
            raise ValueError(
                f"{source}: labels {sorted(names)} are not 0..k-1; pass label_words=[...] "
                "covering every class index"
            )
        label_words = [names[k] for k in range(len(names))]
    words = [str(w) for w in label_words]
    for w in words:
        if not w.strip():
            raise ValueError(f"{source}: a label word is empty or only whitespace ({w!r}); give every class a visible name "
                             "(label_name in the file, or label_words=[...])")
    examples = []
    for i, (text, lab) in enumerate(zip(inputs, labels)):
        if not 0 <= lab < len(words):
            raise ValueError(
                f"{source}: record {i} has label {lab}, outside 0..{len(words) - 1} of "
                f"label_words {words}; pass label_words with one name per class"
            )
        examples.append(Example(text, words[lab], lab))
    if len(set(labels)) < 2:
        raise ValueError(f"{source}: every example has label {labels[0] if labels else None}: a classification task needs "
                         "examples of at least two classes (agreement with one class would be 1.000 by construction)")
    return Task(
        name=task_name, examples=examples, kind="classification", label_words=words, template=tmpl
    )


def load_json_list(path: str | os.PathLike, *, name: str | None = None, template: Template | None = None) -> Task:
    """A word task stored as one JSON list of ``{"input": ..., "output": ...}`` objects (the format
    of Todd et al.'s word tasks, e.g. ``../shared/datasets/word_tasks/antonym.json``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{p}: not valid JSON ({err}); a word task file is a JSON list of "
                         '{"input": ..., "output": ...} objects (or use a .jsonl file, one object per line)') from None
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) and "input" in r and "output" in r for r in data):
        raise ValueError(f'{p}: expected a non-empty JSON list of {{"input": ..., "output": ...}} objects')
    examples = [Example(str(r["input"]).strip(), str(r["output"]).strip()) for r in data]
    return Task(name=name or p.stem, examples=examples, kind="generation", template=template or Template())


def load_jsonl(
    path: str | os.PathLike,
    *,
    input_key: str | None = None,
    output_key: str | None = None,
    label_key: str | None = None,
    name: str | None = None,
    label_words: Sequence[str] | None = None,
    template: Template | None = None,
) -> Task:
    """Load a task from a JSON-lines file (one object per line; blank lines are skipped).

    Shapes recognised when the keys are not given:

    * ``{"input": ..., "output": ...}`` -> generation task;
    * ``{"text": ..., "label": int, "label_name": ...}`` -> classification task; ``label_words``
      comes from the argument, else from the sorted distinct ``(label, label_name)`` pairs;
    * ``{"premise": ..., "hypothesis": ..., "label": int}`` (NLI-style pairs) -> classification
      with input ``premise + " " + hypothesis``.

    ``input_key`` / ``output_key`` / ``label_key`` override the field names.  Whitespace around
    inputs and outputs is stripped (the template adds the space).  ``name`` defaults to the file
    stem, ``template`` to :class:`Template()`.
    """
    p = Path(path)
    records = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(
                    f"{p}:{lineno}: expected a JSON object per line, got {type(rec).__name__}"
                )
            records.append(rec)
    return _task_from_records(
        records, str(p), input_key=input_key, output_key=output_key, label_key=label_key,
        name=name if name is not None else p.stem, label_words=label_words, template=template,
    )


#: Prompt templates of Zhao et al. 2021 (tonyzhaozh/few-shot-learning) for the datasets that
#: ``load_dataset_dir`` knows by folder name; other folders get ``Template()``.
DATASET_TEMPLATES: dict[str, Template] = {
    **{t: SENTIMENT_TEMPLATE for t in ("sst2", "sst5", "mr", "cr")},
    "subj": Template(input_prefix="Input:", output_prefix="Type:"),
    "agnews": Template(input_prefix="Article:", output_prefix="Answer:"),
    "dbpedia": Template(input_prefix="Article:", output_prefix="Answer:"),
    "trec": Template(input_prefix="Question:", output_prefix="Answer Type:"),
    "cb": Template(input_prefix="", output_prefix="true, false, or neither? answer:"),
    "rte": Template(input_prefix="", output_prefix="True or False? answer:"),
}


def load_dataset_dir(path: str | os.PathLike, *, template: Template | None = None,
                     label_words: Sequence[str] | None = None, name: str | None = None) -> Task:
    """A classification dataset folder: ``train.jsonl`` (the demonstration pool), ``test.jsonl``
    (the queries, as :attr:`Task.test_examples`) and optional ``meta.json`` whose
    ``label_words`` are the words shown (e.g. agnews' "Technology" for class "Sci/Tech").

    Records as in :func:`load_jsonl`.  ``template`` defaults to ``meta.json``'s ``"template"``
    (the :class:`Template` fields), else the folder's entry in :data:`DATASET_TEMPLATES` (Zhao et
    al. 2021), else :class:`Template()`.
    """
    folder = Path(path)
    for f in ("train.jsonl", "test.jsonl"):
        if not (folder / f).exists():
            raise ValueError(f"{folder} has no {f}; a dataset folder needs train.jsonl and test.jsonl")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8")) if (folder / "meta.json").exists() else {}
    words = list(label_words) if label_words is not None else meta.get("label_words")
    task_name = name if name is not None else meta.get("task", folder.name)
    if template is not None:
        tmpl = template
    elif "template" in meta:
        tmpl = Template(**meta["template"])
    else:
        tmpl = DATASET_TEMPLATES.get(folder.name, Template())
    train = load_jsonl(folder / "train.jsonl", name=task_name, label_words=words, template=tmpl)
    test = load_jsonl(folder / "test.jsonl", name=task_name, label_words=train.label_words, template=tmpl)
    if train.kind != test.kind:
        raise ValueError(f"{folder}: train.jsonl is {train.kind} but test.jsonl is {test.kind}")
    train.test_examples = test.examples
    return train


def load_csv(
    path: str | os.PathLike,
    *,
    input_key: str | None = None,
    output_key: str | None = None,
    label_key: str | None = None,
    name: str | None = None,
    label_words: Sequence[str] | None = None,
    template: Template | None = None,
) -> Task:
    """Load a task from a CSV file with a header row (read with :class:`csv.DictReader`).

    Same column conventions as :func:`load_jsonl`: ``input,output`` (generation),
    ``text,label[,label_name]`` (classification) or ``premise,hypothesis,label``.
    """
    p = Path(path)
    with p.open(encoding="utf-8", newline="") as f:
        records = [dict(r) for r in csv.DictReader(f)]
    return _task_from_records(
        records, str(p), input_key=input_key, output_key=output_key, label_key=label_key,
        name=name if name is not None else p.stem, label_words=label_words, template=template,
    )


def load_hf_dataset(
    name: str,
    split: str,
    *,
    text_key: str | Sequence[str] = "text",
    label_key: str = "label",
    label_words: Sequence[str] | None = None,
    config: str | None = None,
    limit: int | None = None,
    template: Template | None = None,
) -> Task:
    """Load a classification task from the Hugging Face Hub with ``datasets.load_dataset``.

    Needs the optional ``datasets`` package and network access (or a warm local cache).
    ``text_key`` may be a sequence of fields, joined with a space (e.g. premise + hypothesis).
    ``label_words`` defaults to the names of a ``ClassLabel`` feature.  ``limit`` keeps the
    first ``limit`` rows of the split.
    """
    try:
        import datasets  # noqa: PLC0415 (optional dependency)
    except ImportError as e:
        raise ImportError(
            "load_hf_dataset needs the 'datasets' package: pip install datasets"
        ) from e
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of rows or None, got {limit}")

    ds = (datasets.load_dataset(name, config, split=split) if config is not None
          else datasets.load_dataset(name, split=split))
    if label_words is None:
        features = getattr(ds, "features", None) or {}
        feature = features.get(label_key)
        names = getattr(feature, "names", None)
        if not names:
            raise ValueError(
                f"{name}: the {label_key!r} column has no class names; pass label_words=[...]"
            )
        label_words = list(names)
    keys = (text_key,) if isinstance(text_key, str) else tuple(text_key)
    records = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(
                f"{name}: row {i} has no field(s) {missing} (fields: {sorted(row)}); "
                "pass text_key=... naming the text column(s)"
            )
        rec = dict(row)
        rec["__text__"] = " ".join(str(row[k]).strip() for k in keys)
        records.append(rec)
    return _task_from_records(
        records, name, input_key="__text__", output_key=None, label_key=label_key,
        name=f"{name}/{config}" if config else name, label_words=label_words, template=template,
    )


def split_examples(
    examples: Sequence[Example], n_queries: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split examples into a demonstration pool and held-out queries.

    The examples are shuffled with ``random.Random(seed)``; the first ``n_queries`` become the
    queries and the rest the pool (both in shuffled order).  Deterministic for a seed, disjoint
    by position.  Returns ``(pool, queries)``.
    """
    examples = list(examples)
    n = len(examples)
    if isinstance(n_queries, bool) or not isinstance(n_queries, int) or not 0 <= n_queries <= n:
        raise ValueError(
            f"n_queries must be an int in 0..{n} (the number of examples), got {n_queries!r}"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    queries = [examples[i] for i in order[:n_queries]]
    pool = [examples[i] for i in order[n_queries:]]
    return pool, queries


def resolve_task(task: str | Task) -> Task:
    """A bundled task name, a dataset folder (train.jsonl + test.jsonl), a JSONL file, or a name
    under ``$ICL_INTERP_DATA/classification``.  A bare name that is both a bundled task and a
    file or folder here is an error (say ``./name`` for the local one), never a silent choice."""
    import dataclasses

    if isinstance(task, Task):
        return task
    path = Path(task)
    if str(task) in BUNDLED_TASKS:
        if path.exists() and "/" not in str(task):
            raise ValueError(f"{task!r} is both a bundled task and a {'folder' if path.is_dir() else 'file'} in the working "
                             f"directory: pass ./{task} for the local one, or run from another directory for the bundled task")
        return dataclasses.replace(load_task(task), source=f"bundled:{task}")
    if path.is_dir():
        return dataclasses.replace(load_dataset_dir(path), source=f"folder:{path.resolve()}")
    if path.suffix == ".json" and path.is_file():
        return dataclasses.replace(load_json_list(path), source=f"file:{path.resolve()}")
    if task.endswith(".jsonl") or path.exists():
        return dataclasses.replace(load_jsonl(task), source=f"file:{path.resolve()}")
    loaded = load_task(task)
    return dataclasses.replace(loaded, source=loaded.source or f"data:{task}")

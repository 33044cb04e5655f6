"""ICL prompts with exact token bookkeeping.

A prompt is a sequence of *pieces* (instructions, input prefix, demo input, separator, output
prefix, label, demo separator, ..., query input, output prefix).  By default (``tokenisation=
"whole-text"``) the joined text is tokenised at once, exactly as the model's tokenizer reads it
(``input_ids`` = BOS where the tokenizer adds one + ``tokenizer.encode(text)``), and each piece's
token span comes from character offsets: a token belongs to the piece holding its first character
(a token that runs into the next piece is counted in ``IclBatch.straddles``).  Nothing is found by
searching the decoded string.  ``tokenisation="piecewise"`` tokenises each piece on its own and
concatenates the ids (the project's earlier default, for comparison).

Layout of one demo (Template defaults, the function-vector format of Todd et al. 2023)::

    "Q:" " <x_i>" "\n" "A:" " <y_i>" "\n\n"

and the query ends with the output prefix ``"A:"``; its last token predicts ``" <y_q>"``.
"""
from __future__ import annotations

import random
import re
import weakref
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Sequence

import torch
from jaxtyping import Int

from interp.model import position_ids_from_mask

if TYPE_CHECKING:  # interp.tasks imports Template from this module
    from interp.tasks import Example, Task


Tokenisation = Literal["whole-text", "piecewise"]
TOKENISATIONS: tuple[str, ...] = ("whole-text", "piecewise")


@dataclass(frozen=True)
class Template:
    """How demonstrations are written.

    A demo is ``input_prefix + " " + x + in_out_sep + output_prefix + " " + y + demo_sep``
    (the spaces only when ``space_before_text``); the query stops after ``output_prefix``.
    ``tokenisation``: how the rendered text becomes tokens (:func:`build_icl_batch`):
    ``"whole-text"`` (default, as the model reads it) or ``"piecewise"``.
    """

    input_prefix: str = "Q:"
    output_prefix: str = "A:"
    in_out_sep: str = "\n"
    demo_sep: str = "\n\n"
    instructions: str = ""
    space_before_text: bool = True
    tokenisation: str = "whole-text"

    def __post_init__(self) -> None:
        if self.tokenisation not in TOKENISATIONS:
            raise ValueError(f"tokenisation must be one of {TOKENISATIONS}, got {self.tokenisation!r}")


@dataclass(frozen=True)
class Span:
    """Half-open token span ``[start, end)`` in a (padded) row of the batch."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start

    def positions(self) -> list[int]:
        return list(range(self.start, self.end))

    def shifted(self, delta: int) -> "Span":
        """The same span moved by ``delta`` positions (used when padding changes)."""
        return Span(self.start + delta, self.end + delta)

    def to_list(self) -> list[int]:
        """``[start, end]``, JSON-safe."""
        return [self.start, self.end]


# --------------------------------------------------------------------------------------------
# Tokenising pieces
# --------------------------------------------------------------------------------------------

#: Texts that are prepended to a piece to learn how it tokenises *after other text*.
_ANCHORS: tuple[str, ...] = ("\n", ".", "a")

_PIECE_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()
_DUMMY_CACHE: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _encode(tokenizer: Any, text: str) -> list[int]:
    """The tokenizer's own ids for ``text`` without special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def _anchored_ids(tokenizer: Any, text: str) -> list[int] | None:
    """Ids of ``text`` as it tokenises after an anchor: ``enc(anchor + text) - enc(anchor)``.

    Tries each anchor in :data:`_ANCHORS` and uses the first whose ids are an exact prefix of the
    joint encoding (so the subtraction is well defined).  ``None`` when no anchor works.
    """
    for anchor in _ANCHORS:
        head = _encode(tokenizer, anchor)
        joint = _encode(tokenizer, anchor + text)
        if joint[: len(head)] == head:
            return joint[len(head):]
    return None


def adds_dummy_prefix(tokenizer: Any) -> bool:
    """Whether the tokenizer prepends a word-boundary marker to every separately encoded text.

    Sentencepiece tokenizers (Llama-2 style, ``add_dummy_prefix`` / Metaspace ``prepend_scheme``)
    encode ``"a"`` as ``"▁a"`` but the ``"a"`` of ``"\\na"`` as plain ``"a"``.  We detect this by
    comparing ``enc("a")`` with ``enc("\\n" + "a")`` minus ``enc("\\n")``: they differ exactly
    when encoding depends on being at the start of the text.  Cached per tokenizer.
    """
    try:
        return _DUMMY_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    anchored = _anchored_ids(tokenizer, "a")
    result = anchored is not None and anchored != _encode(tokenizer, "a")
    try:
        _DUMMY_CACHE[tokenizer] = result
    except TypeError:
        pass
    return result


def tokenize_piece(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one prompt piece (``add_special_tokens=False``), as it reads inside a prompt.

    Prompts are built by tokenising pieces separately and concatenating their ids, so every span
    is exact by construction.  For byte-level BPE tokenizers (GPT-2, SmolLM2) a piece's own
    encoding is used as is.  For tokenizers that add a dummy ``"▁"`` prefix to every encoded text
    (see :func:`adds_dummy_prefix`) the piece is encoded after an anchor and the anchor's ids are
    removed: ``enc("\\n" + text)[len(enc("\\n")):]``.  The result is what ``text`` means when it
    follows other text (``"Q:"`` -> ``Q``, ``:``; ``" Paris"`` -> ``▁Paris``), never a spurious
    word boundary.  This applies to the first piece of a prompt too, so every demonstration is
    tokenised identically.  Results are cached per (tokenizer, text).
    """
    if not text:
        return []
    try:
        cache = _PIECE_CACHE.setdefault(tokenizer, {})
    except TypeError:  # tokenizer not weak-referenceable / hashable: no cache
        cache = {}
    hit = cache.get(text)
    if hit is not None:
        return list(hit)
    ids = _encode(tokenizer, text)
    if adds_dummy_prefix(tokenizer):
        anchored = _anchored_ids(tokenizer, text)
        if anchored is not None:
            ids = anchored
        elif ids and tokenizer.convert_ids_to_tokens(ids[0]) == "\u2581":
            ids = ids[1:]  # last resort: drop a bare dummy-prefix token
    cache[text] = tuple(ids)
    return list(ids)


def bos_to_prepend(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer prepends it by default (``tokenizer("a")`` starts with it)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if list(ids)[:1] == [bos] else None


def _pad_id(tokenizer: Any) -> int:
    """``pad_token_id``, else ``eos_token_id``; a ValueError when the tokenizer has neither."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError(
        "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token = ... first"
    )


# --------------------------------------------------------------------------------------------
# Label words
# --------------------------------------------------------------------------------------------

LabelPolicy = Literal["first-token", "sequence"]
LABEL_POLICIES: tuple[str, ...] = ("first-token", "sequence")


@dataclass
class LabelWords:
    """The label words of a classification task, as shown in the prompt, with their token ids.

    ``words`` include the template's leading space (``" positive"``).  ``policy`` says how a
    class is scored: ``"first-token"`` (log-prob of each word's first token; first tokens are
    distinct) or ``"sequence"`` (sum of log-probs of all of each word's tokens).
    """

    words: list[str]
    token_ids: list[list[int]]
    policy: LabelPolicy

    def __len__(self) -> int:
        return len(self.words)

    @property
    def first_token_ids(self) -> Int[torch.Tensor, " classes"]:
        """First token id of every class's word, LongTensor ``[C]``."""
        return torch.tensor([ids[0] for ids in self.token_ids], dtype=torch.long)

    @classmethod
    def from_words(
        cls,
        tokenizer: Any,
        words: Sequence[str],
        *,
        policy: str | None = None,
        leading_space: bool = True,
    ) -> "LabelWords":
        """Tokenise label words (``" " + w`` when ``leading_space``) and check they are usable.

        ``policy=None`` is allowed only when every word is a single token (then it is
        ``"first-token"``).  Raises ValueError for a word outside the vocabulary (unk), a
        multi-token word without a policy, or classes that cannot be told apart.
        """
        if policy is not None and policy not in LABEL_POLICIES:
            raise ValueError(f"label_policy must be 'first-token', 'sequence' or None, got {policy!r}")
        if len(words) < 2:
            raise ValueError(f"a classification task needs at least 2 label words, got {list(words)}")
        shown = [(" " + w if leading_space else w) for w in words]
        token_ids = [tokenize_piece(tokenizer, w) for w in shown]
        for word, ids in zip(shown, token_ids):
            _check_in_vocab(tokenizer, word, ids)
        if policy is None:
            policy = _default_policy(shown, token_ids)
        _check_distinct(shown, token_ids, policy)
        return cls(words=shown, token_ids=token_ids, policy=policy)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """JSON-safe form."""
        return {"words": list(self.words), "token_ids": [list(t) for t in self.token_ids],
                "policy": self.policy}

    @classmethod
    def from_dict(cls, data: dict) -> "LabelWords":
        """Inverse of :meth:`to_dict`."""
        return cls(list(data["words"]), [list(t) for t in data["token_ids"]], data["policy"])


def _check_in_vocab(tokenizer: Any, word: str, ids: list[int]) -> None:
    """ValueError if ``word`` encodes to nothing or to the unk token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids):
        raise ValueError(
            f"label word {word!r} is not in the tokenizer's vocabulary (it encodes to "
            f"{'the unk token' if ids else 'no tokens'}); pick another label word "
            "(label_words=[...])"
        )


def _default_policy(words: list[str], token_ids: list[list[int]]) -> LabelPolicy:
    """``"first-token"`` when all words are single tokens, else a ValueError naming the fix."""
    for word, ids in zip(words, token_ids):
        if len(ids) > 1:
            raise ValueError(
                f"label word {word!r} is {len(ids)} tokens for this tokenizer; pass "
                "label_policy=\"first-token\" (score its first token) or label_policy=\"sequence\" "
                "(score all its tokens), or pick single-token label words"
            )
    return "first-token"


def _check_distinct(words: list[str], token_ids: list[list[int]], policy: str) -> None:
    """ValueError if two classes are indistinguishable under ``policy``."""
    seen: dict[tuple[int, ...], str] = {}
    for word, ids in zip(words, token_ids):
        key = (ids[0],) if policy == "first-token" else tuple(ids)
        if key in seen:
            what = "the same first token" if policy == "first-token" else "the same tokens"
            fix = ('use label_policy="sequence" or ' if policy == "first-token" else "")
            raise ValueError(
                f"label words {seen[key]!r} and {word!r} share {what} ({list(key)}), so the "
                f"classes cannot be told apart under label_policy={policy!r}; {fix}pick label "
                "words that differ"
            )
        seen[key] = word


# --------------------------------------------------------------------------------------------
# Spans of one row
# --------------------------------------------------------------------------------------------


@dataclass
class RowSpans:
    """Token spans of one prompt row; positions are in the padded row (shifted by left padding).

    ``demo_blocks[i]`` runs from the start of demo i's input prefix to the end of its label,
    without the trailing demo separator (the ``[x_i, y_i]`` span of Han et al.).
    ``input_prefixes`` / ``output_prefixes`` have k+1 entries: the demos', then the query's.
    ``final`` is the last real token (it predicts the answer); ``pad`` the number of pad tokens;
    ``length`` the number of real tokens.  ``bos`` is the prepended BOS token (if any) and
    ``instructions`` the instruction text (if the template has one).
    """

    demo_inputs: list[Span]
    demo_labels: list[Span]
    demo_blocks: list[Span]
    separators: list[Span]
    input_prefixes: list[Span]
    output_prefixes: list[Span]
    query_input: Span
    query_block: Span
    final: int
    pad: int
    length: int
    bos: Span | None = None
    instructions: Span | None = None

    _LISTS: ClassVar[tuple[str, ...]] = (
        "demo_inputs", "demo_labels", "demo_blocks", "separators", "input_prefixes",
        "output_prefixes",
    )
    _SPANS: ClassVar[tuple[str, ...]] = ("query_input", "query_block", "bos", "instructions")

    @property
    def start(self) -> int:
        """Position of the first real token."""
        return self.final + 1 - self.length

    def shifted(self, delta: int, *, pad: int | None = None) -> "RowSpans":
        """All positions moved by ``delta``; ``pad`` replaces the pad count when given."""
        out = {name: [s.shifted(delta) for s in getattr(self, name)] for name in self._LISTS}
        for name in self._SPANS:
            span = getattr(self, name)
            out[name] = None if span is None else span.shifted(delta)
        return RowSpans(**out, final=self.final + delta,
                        pad=self.pad if pad is None else pad, length=self.length)

    def to_dict(self) -> dict:
        """JSON-safe form: spans as ``[start, end]``."""
        out: dict = {name: [s.to_list() for s in getattr(self, name)] for name in self._LISTS}
        for name in self._SPANS:
            span = getattr(self, name)
            out[name] = None if span is None else span.to_list()
        out.update(final=self.final, pad=self.pad, length=self.length)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "RowSpans":
        """Inverse of :meth:`to_dict`."""
        out: dict = {name: [Span(*s) for s in data[name]] for name in cls._LISTS}
        for name in cls._SPANS:
            out[name] = None if data.get(name) is None else Span(*data[name])
        return cls(**out, final=data["final"], pad=data["pad"], length=data["length"])


def token_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The tokenizer's ids for ``text`` (no special tokens) and each token's character span.

    Fast tokenizers give the offset mapping.  For others the spans come from decoding growing
    prefixes of the ids (token i ends where the decoded text of ids[:i+1] ends); a ValueError
    names the fix when decoding does not give the text back."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    ids = _encode(tokenizer, text)
    ends = [len(tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False)) for i in range(len(ids))]
    if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != text:
        raise ValueError("this tokenizer gives no offset mapping and does not decode the prompt back to its text, "
                         "so spans cannot be read from character offsets: pass tokenisation='piecewise'")
    starts = [0] + ends[:-1]
    return ids, list(zip(starts, ends))


def _whole_text_spans(tokenizer: Any, pieces: Sequence[str]) -> tuple[list[int], list[Span], int]:
    """Tokenise the joined pieces as one text; (ids, one token span per piece, straddles).

    Rule: a token belongs to the piece that holds its first character (its offset start); a
    piece none of whose characters starts a token gets an empty span where the next token
    starts.  A token that also covers characters of a later piece *straddles* the boundary;
    ``straddles`` counts them."""
    text = "".join(pieces)
    ids, offsets = token_offsets(tokenizer, text)
    bounds, c = [], 0
    for piece in pieces:
        bounds.append((c, c + len(piece)))
        c += len(piece)
    owner = []  # piece index of every token
    p = 0
    for a, _ in offsets:
        while p < len(pieces) - 1 and a >= bounds[p][1]:
            p += 1
        owner.append(p)
    spans, straddles, t = [], 0, 0
    for i, (lo, hi) in enumerate(bounds):
        start = t
        while t < len(ids) and owner[t] == i:
            if offsets[t][1] > hi:
                straddles += 1
            t += 1
        spans.append(Span(start, t))
    return ids, spans, straddles


class _RowBuilder:
    """Collects the pieces of one row; :meth:`finish` tokenises them (the whole text at once,
    spans from character offsets; or piece by piece) and resolves every piece's span."""

    def __init__(self, tokenizer: Any, tokenisation: str = "whole-text") -> None:
        self.tokenizer = tokenizer
        self.tokenisation = tokenisation
        self.lead: list[int] = []  # raw ids before the text (BOS)
        self.text: list[str] = []

    def add(self, text: str) -> int:
        """Append one piece; a handle that :meth:`finish`'s spans are indexed by."""
        self.text.append(text)
        return len(self.text) - 1

    def add_ids(self, ids: list[int]) -> Span:
        """Raw ids (the BOS token) that have no text, in front of the text."""
        if self.text:
            raise ValueError("raw ids go in front of the prompt text")
        span = Span(len(self.lead), len(self.lead) + len(ids))
        self.lead.extend(ids)
        return span

    def finish(self) -> tuple[list[int], list[Span], int]:
        """(ids, span of every piece, tokens straddling a piece boundary)."""
        n = len(self.lead)
        if self.tokenisation == "whole-text":
            ids, spans, straddles = _whole_text_spans(self.tokenizer, self.text)
            return self.lead + ids, [s.shifted(n) for s in spans], straddles
        ids, spans = list(self.lead), []
        for piece in self.text:
            piece_ids = tokenize_piece(self.tokenizer, piece)
            spans.append(Span(len(ids), len(ids) + len(piece_ids)))
            ids.extend(piece_ids)
        return ids, spans, 0


def _shown(template: Template, text: str) -> str:
    """``text`` as it appears in the prompt (with the template's leading space)."""
    return " " + text if template.space_before_text else text


def _build_row(
    tokenizer: Any, template: Template, demos: Sequence["Example"], query: "Example",
    bos: int | None, tokenisation: str = "whole-text",
) -> tuple[list[int], RowSpans, str, int]:
    """Ids, unpadded spans, prompt text and straddling-token count of one row (demos, query)."""
    b = _RowBuilder(tokenizer, tokenisation)
    bos_span = b.add_ids([bos]) if bos is not None else None
    separators: list[int] = []
    instructions = None
    if template.instructions:
        instructions = b.add(template.instructions)
        separators.append(b.add(template.demo_sep))
    inputs, labels, in_pre, out_pre = [], [], [], []
    for demo in demos:
        in_pre.append(b.add(template.input_prefix))
        inputs.append(b.add(_shown(template, demo.input)))
        separators.append(b.add(template.in_out_sep))
        out_pre.append(b.add(template.output_prefix))
        labels.append(b.add(_shown(template, demo.output)))
        separators.append(b.add(template.demo_sep))
    in_pre.append(b.add(template.input_prefix))
    query_input = b.add(_shown(template, query.input))
    separators.append(b.add(template.in_out_sep))
    out_pre.append(b.add(template.output_prefix))
    ids, piece, straddles = b.finish()
    n = len(ids)
    if n == 0 or (n == len(b.lead)):
        raise ValueError("the prompt encodes to no tokens; check the template and the examples")
    s = lambda handles: [piece[h] for h in handles]  # noqa: E731
    spans = RowSpans(
        demo_inputs=s(inputs), demo_labels=s(labels),
        demo_blocks=[Span(piece[x].start, piece[y].end) for x, y in zip(in_pre, labels)], separators=s(separators),
        input_prefixes=s(in_pre), output_prefixes=s(out_pre), query_input=piece[query_input],
        query_block=Span(piece[in_pre[-1]].start, n), final=n - 1, pad=0, length=n,
        bos=bos_span, instructions=None if instructions is None else piece[instructions],
    )
    return ids, spans, "".join(b.text), straddles


def _pad_rows(
    rows: Sequence[list[int]], spans: Sequence[RowSpans], pad_id: int,
    side: Literal["left", "right"],
) -> tuple[torch.Tensor, torch.Tensor, list[RowSpans]]:
    """Pad unpadded rows to the longest; (input_ids, attention_mask, spans shifted for padding)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    out = []
    for i, (row, sp) in enumerate(zip(rows, spans)):
        pad = width - len(row)
        offset = pad if side == "left" else 0
        input_ids[i, offset: offset + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, offset: offset + len(row)] = 1
        out.append(sp.shifted(offset - sp.start, pad=pad))
    return input_ids, mask, out


# --------------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------------


def _example_to_dict(e: "Example") -> dict:
    return {"input": e.input, "output": e.output, "label": e.label}


def _example_from_dict(d: dict) -> "Example":
    from interp.tasks import Example  # noqa: PLC0415 (interp.tasks imports this module)

    return Example(d["input"], d["output"], d.get("label"))


@dataclass
class IclBatch:
    """A padded batch of ICL prompts with exact token spans.

    ``demos[b]`` are row b's demonstrations as shown (with the labels actually in the prompt);
    ``target_ids[b]`` is the first token of the query's answer as shown (``" " + output``);
    ``gold[b]`` its class index (classification) or ``None``; ``texts[b]`` the prompt text
    (without BOS).  Spans in ``rows`` are positions in the padded ``input_ids``.
    """

    input_ids: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    rows: list[RowSpans]
    demos: list[list["Example"]]
    queries: list["Example"]
    target_ids: Int[torch.Tensor, " batch"]
    gold: Int[torch.Tensor, " batch"] | None
    label_words: LabelWords | None
    padding_side: Literal["left", "right"]
    template: Template
    seed: int
    k: int
    texts: list[str] = field(default_factory=list)
    tokenisation: str = "whole-text"
    straddles: list[int] = field(default_factory=list)  # per row: tokens that straddle two pieces

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def final_positions(self) -> Int[torch.Tensor, " batch"]:
        """Position of every row's last real token (the one that predicts the answer)."""
        return torch.tensor([r.final for r in self.rows], dtype=torch.long)

    def label_positions(self, which: Literal["first", "last"] = "first") -> Int[torch.Tensor, "batch k"]:
        """Position of the first (or last) token of every demo label, ``[B, k]``."""
        if which not in ("first", "last"):
            raise ValueError(f"which must be 'first' or 'last', got {which!r}")
        pos = [[s.start if which == "first" else s.end - 1 for s in r.demo_labels] for r in self.rows]
        return torch.tensor(pos, dtype=torch.long).reshape(len(self.rows), self.k)

    def position_ids(self) -> Int[torch.Tensor, "batch pos"]:
        """Position ids that ignore left padding: ``cumsum(mask) - 1`` clamped at 0."""
        return position_ids_from_mask(self.attention_mask)

    def select(self, indices: Sequence[int] | torch.Tensor) -> "IclBatch":
        """The rows ``indices`` (in that order), re-padded to their minimal common length."""
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        if not idx:
            raise ValueError("select needs at least one row index")
        rows, spans = [], []
        for i in idx:
            r = self.rows[i]
            rows.append(self.input_ids[i, r.start: r.start + r.length].tolist())
            spans.append(r)
        pad_id = self._pad_value()
        input_ids, mask, new_spans = _pad_rows(rows, spans, pad_id, self.padding_side)
        return replace(
            self, input_ids=input_ids.to(self.input_ids.device),
            attention_mask=mask.to(self.attention_mask.device), rows=new_spans,
            demos=[self.demos[i] for i in idx], queries=[self.queries[i] for i in idx],
            target_ids=self.target_ids[idx],
            gold=None if self.gold is None else self.gold[idx],
            texts=[self.texts[i] for i in idx] if self.texts else [],
            straddles=[self.straddles[i] for i in idx] if self.straddles else [],
        )

    def sorted_by_length(self) -> "IclBatch":
        """The rows shortest first (stable), so that minibatches carry little padding; per-row
        results then come in this order (aggregates are unchanged)."""
        lengths = self.attention_mask.sum(1).cpu()
        return self.select(torch.sort(lengths, stable=True).indices)

    def _pad_value(self) -> int:
        """The id used on pad positions (0 when the batch has no padding)."""
        pads = self.input_ids[self.attention_mask == 0]
        return int(pads[0]) if pads.numel() else 0

    def to(self, device: torch.device | str) -> "IclBatch":
        """A copy with the tensors on ``device``."""
        return replace(
            self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
            target_ids=self.target_ids.to(device),
            gold=None if self.gold is None else self.gold.to(device),
        )

    def to_dict(self) -> dict:
        """JSON-safe form: ids as lists, spans as ``[start, end]``, examples and texts."""
        return {
            "input_ids": self.input_ids.tolist(),
            "attention_mask": self.attention_mask.tolist(),
            "rows": [r.to_dict() for r in self.rows],
            "demos": [[_example_to_dict(e) for e in row] for row in self.demos],
            "queries": [_example_to_dict(e) for e in self.queries],
            "target_ids": self.target_ids.tolist(),
            "gold": None if self.gold is None else self.gold.tolist(),
            "label_words": None if self.label_words is None else self.label_words.to_dict(),
            "padding_side": self.padding_side,
            "template": asdict(self.template),
            "seed": self.seed,
            "k": self.k,
            "texts": list(self.texts),
            "tokenisation": self.tokenisation,
            "straddles": list(self.straddles),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "IclBatch":
        """Inverse of :meth:`to_dict` (tensors on the CPU)."""
        lw = data.get("label_words")
        return cls(
            input_ids=torch.tensor(data["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(data["attention_mask"], dtype=torch.long),
            rows=[RowSpans.from_dict(r) for r in data["rows"]],
            demos=[[_example_from_dict(e) for e in row] for row in data["demos"]],
            queries=[_example_from_dict(e) for e in data["queries"]],
            target_ids=torch.tensor(data["target_ids"], dtype=torch.long),
            gold=None if data.get("gold") is None else torch.tensor(data["gold"], dtype=torch.long),
            label_words=None if lw is None else LabelWords.from_dict(lw),
            padding_side=data["padding_side"],
            template=Template(**data["template"]),
            seed=data["seed"],
            k=data["k"],
            texts=list(data.get("texts", [])),
            tokenisation=data.get("tokenisation", "piecewise"),
            straddles=list(data.get("straddles", [])),
        )


# --------------------------------------------------------------------------------------------
# Demo selection
# --------------------------------------------------------------------------------------------

Selector = Callable[["Example", Sequence["Example"], int, random.Random], "list[Example]"]


def jaccard_words(a: str, b: str) -> float:
    """Jaccard overlap of the lower-cased word sets of two texts (0 when both are empty)."""
    wa, wb = set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower()))
    union = wa | wb
    return len(wa & wb) / len(union) if union else 0.0


def most_similar_first(similarity: Callable[[str, str], float] | None = None) -> Selector:
    """A demo selector that picks the k pool examples most similar to the query's input.

    ``similarity(query_input, demo_input)`` defaults to :func:`jaccard_words`.  The pool is
    ranked most-similar-first (ties keep pool order) and the top k are returned in *ascending*
    similarity, so the most similar demo is placed LAST, right before the query.
    """
    sim = similarity if similarity is not None else jaccard_words

    def select(query: "Example", pool: Sequence["Example"], k: int, rng: random.Random) -> list["Example"]:
        ranked = sorted(range(len(pool)), key=lambda i: -sim(query.input, pool[i].input))
        return [pool[i] for i in reversed(ranked[:k])]

    return select


def per_class(shots: int = 1) -> Selector:
    """A demo selector with ``shots`` demos of every class (Wang et al.'s ``demonstration_shot``),
    drawn at random from the pool and shuffled; k must be shots × the number of classes."""

    def select(query: "Example", pool: Sequence["Example"], k: int, rng: random.Random) -> list["Example"]:
        classes = list(dict.fromkeys(e.output for e in pool))
        if k != shots * len(classes):
            raise ValueError(f"per_class({shots}) needs k = {shots} x {len(classes)} classes = {shots * len(classes)}, got k={k}")
        out = []
        for c in classes:
            of_class = [e for e in pool if e.output == c]
            if len(of_class) < shots:
                raise ValueError(f"the pool has {len(of_class)} examples of class {c!r}, fewer than {shots}")
            out += rng.sample(of_class, shots)
        rng.shuffle(out)
        return out

    return select


def _split(examples: Sequence["Example"], n: int, seed: int) -> tuple[list["Example"], list["Example"]]:
    """Seeded split into (pool, queries): the first ``n`` of a ``Random(seed)`` shuffle are queries."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(examples):
        raise ValueError(
            f"n must be an int in 1..{len(examples)} (the number of examples queries are drawn "
            f"from), got {n!r}; pass a smaller n"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[n:]], [examples[i] for i in order[:n]]


def _candidates(pool: Sequence["Example"], exclude: set[str]) -> list["Example"]:
    """Pool examples whose input is not one of ``exclude`` (a query is never its own demo)."""
    return [e for e in pool if e.input not in exclude]


def _choose_demos(
    query: "Example", candidates: list["Example"], k: int, rng: random.Random,
    select: Selector | None,
) -> list["Example"]:
    """k demos for one query: ``select(...)`` or a seeded sample without replacement."""
    if len(candidates) < k:
        raise ValueError(
            f"only {len(candidates)} pool examples are available as demos but k={k}; use a "
            "smaller k, fewer queries (n), or a larger pool"
        )
    if select is None:
        return rng.sample(candidates, k)
    chosen = list(select(query, candidates, k, rng))
    if len(chosen) != k:
        raise ValueError(f"the demo selector returned {len(chosen)} demos, expected k={k}")
    return chosen


def _relabel(
    demos: list["Example"], mode: str, rng: random.Random, words: Sequence[str] | None,
    pool: Sequence["Example"],
) -> list["Example"]:
    """Apply ``labels=`` ("gold", "shuffled" or "random") to the chosen demos."""
    if mode == "gold":
        return list(demos)
    if mode == "shuffled":
        answers = [(d.output, d.label) for d in demos]
        rng.shuffle(answers)
        return [replace(d, output=o, label=lab) for d, (o, lab) in zip(demos, answers)]
    if mode != "random":
        raise ValueError(f"labels must be 'gold', 'shuffled' or 'random', got {mode!r}")
    if words is not None:
        out = []
        for d in demos:
            c = rng.randrange(len(words))
            out.append(replace(d, output=words[c], label=c))
        return out
    out = []
    for d in demos:
        others = [e for e in pool if e.input != d.input] or list(pool)
        out.append(replace(d, output=rng.choice(others).output, label=None))
    return out


def _apply_order(demos: list["Example"], order: Sequence[int] | None, k: int) -> list["Example"]:
    """Demos permuted by ``order`` (a permutation of ``range(k)``)."""
    if order is None:
        return demos
    order = [int(i) for i in order]
    if sorted(order) != list(range(k)):
        raise ValueError(f"order must be a permutation of range(k={k}), got {order}")
    return [demos[i] for i in order]


def _class_shown(task: "Task", words: list[str], e: "Example", what: str) -> "Example":
    """``e`` with its output replaced by its class's label word (classification)."""
    if e.label is None or not 0 <= e.label < len(words):
        raise ValueError(
            f"{what} {e.input!r} has label {e.label!r}, not a class index in 0..{len(words) - 1} "
            f"of task {task.name!r}; give every example of a classification task a label"
        )
    return replace(e, output=words[e.label])


# --------------------------------------------------------------------------------------------
# Building a batch
# --------------------------------------------------------------------------------------------


def build_icl_batch(
    tokenizer: Any,
    task: "Task",
    *,
    k: int,
    n: int | None = None,
    queries: Sequence["Example"] | None = None,
    pool: Sequence["Example"] | None = None,
    seed: int = 0,
    template: Template | None = None,
    same_demos: bool = False,
    labels: Literal["gold", "shuffled", "random"] = "gold",
    order: Sequence[int] | None = None,
    select: Selector | None = None,
    padding_side: Literal["left", "right"] = "right",
    label_policy: str | None = None,
    max_length: int | None = None,
    label_words: Sequence[str] | None = None,
    tokenisation: Tokenisation | None = None,
) -> IclBatch:
    """Build a padded batch of k-shot prompts for ``task`` with exact token spans.

    Queries: ``queries`` if given (demos from ``pool``, default all task examples), else a
    seeded split of the task's examples into ``n`` queries and a pool.  A demo never has the
    same input as its query.  Demos: a seeded sample of k per query, one shared sample for all
    rows (``same_demos=True``), or ``select(query, pool, k, rng)``.  ``labels`` then relabels
    them ("shuffled": permute the demos' answers; "random": uniform label words, or outputs of
    other pool examples for generation tasks) and ``order`` permutes them, so a given seed gives
    the same (input, label) pairs whatever the order.  All randomness comes from
    ``random.Random`` seeded with ``seed``; the global RNG is never touched.

    Classification tasks show ``label_words`` (default ``task.label_words``) and build a
    :class:`LabelWords` with ``label_policy``.  ``target_ids`` is the first token of each query's
    answer as shown (``" " + output``).  A BOS token is prepended only when the tokenizer adds
    one by default.  ``max_length`` bounds the real tokens of every row.

    ``tokenisation`` (default: the template's): ``"whole-text"`` (the prompt text is tokenised at once, as the
    model's tokenizer reads a user's prompt and as Wang's and Todd's code do; spans come from
    character offsets, see :func:`_whole_text_spans` for the rule on a token straddling two
    pieces, counted in ``straddles``) or ``"piecewise"`` (each piece tokenised on its own and the
    ids concatenated, the project's earlier default, kept for comparison).
    """
    template = template if template is not None else task.template
    _check_args(k, padding_side, same_demos, select)
    pool_list, query_list = _queries_and_pool(task, n, queries, pool, seed)
    words = _class_words(task, label_words)
    if words is not None:
        query_list = [_class_shown(task, words, q, "query") for q in query_list]
        pool_list = [_class_shown(task, words, e, "pool example") for e in pool_list]
    rng = random.Random(f"icl-demos:{seed}")
    demos = _all_demos(query_list, pool_list, k, rng, same_demos, select)
    demos = [_apply_order(_relabel(d, labels, rng, words, pool_list), order, k) for d in demos]
    lw = None
    if label_policy is None:
        label_policy = getattr(task, "label_policy", None)
    if words is not None:
        lw = LabelWords.from_words(tokenizer, words, policy=label_policy,
                                   leading_space=template.space_before_text)
    tokenisation = tokenisation if tokenisation is not None else template.tokenisation
    if tokenisation not in TOKENISATIONS:
        raise ValueError(f"tokenisation must be one of {TOKENISATIONS}, got {tokenisation!r}")
    bos = bos_to_prepend(tokenizer)
    built = [_build_row(tokenizer, template, d, q, bos, tokenisation) for d, q in zip(demos, query_list)]
    _check_lengths([b[0] for b in built], max_length, k)
    input_ids, mask, spans = _pad_rows([b[0] for b in built], [b[1] for b in built],
                                       _pad_id(tokenizer), padding_side)
    return IclBatch(
        input_ids=input_ids, attention_mask=mask, rows=spans, demos=demos, queries=query_list,
        target_ids=_targets(tokenizer, template, query_list),
        gold=None if words is None else torch.tensor([q.label for q in query_list], dtype=torch.long),
        label_words=lw, padding_side=padding_side, template=template, seed=seed, k=k,
        texts=[b[2] for b in built], tokenisation=tokenisation, straddles=[b[3] for b in built],
    )


def _check_args(k: int, padding_side: str, same_demos: bool, select: Selector | None) -> None:
    """ValueErrors for arguments that cannot work together."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (demos per prompt) must be an int >= 0, got {k!r}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if same_demos and select is not None:
        raise ValueError("same_demos=True and select=... are exclusive: a selector picks demos per query")


def _queries_and_pool(
    task: "Task", n: int | None, queries: Sequence["Example"] | None,
    pool: Sequence["Example"] | None, seed: int,
) -> tuple[list["Example"], list["Example"]]:
    """(pool, queries) from the arguments: explicit queries, or a seeded split of the task."""
    if queries is not None:
        query_list = list(queries)
        if n is not None:
            query_list = query_list[:n]
        if not query_list:
            raise ValueError("queries is empty; pass at least one query")
        return list(pool) if pool is not None else list(task.examples), query_list
    if n is None:
        raise ValueError("pass n=number of queries (split from the task) or queries=[...]")
    if task.test_examples is not None:  # a train/test dataset: queries from test, demos from train
        _, query_list = _split(list(task.test_examples), n, seed)
        return list(pool) if pool is not None else list(task.examples), query_list
    source = list(task.examples)
    if pool is not None:  # queries from the task, demos only from the given pool
        _, query_list = _split(source, n, seed)
        return list(pool), query_list
    return _split(source, n, seed)


def _class_words(task: "Task", label_words: Sequence[str] | None) -> list[str] | None:
    """The label words (without leading space) of a classification task, else None."""
    if task.kind != "classification":
        if label_words is not None:
            raise ValueError(f"task {task.name!r} is a generation task; label_words applies to classification")
        return None
    words = label_words if label_words is not None else task.label_words
    if not words:
        raise ValueError(f"classification task {task.name!r} has no label words; pass label_words=[...]")
    return [str(w) for w in words]


def _all_demos(
    queries: list["Example"], pool: list["Example"], k: int, rng: random.Random,
    same_demos: bool, select: Selector | None,
) -> list[list["Example"]]:
    """Demos for every query (shared when ``same_demos``)."""
    if same_demos:
        shared = _choose_demos(queries[0], _candidates(pool, {q.input for q in queries}), k, rng, None)
        return [list(shared) for _ in queries]
    return [_choose_demos(q, _candidates(pool, {q.input}), k, rng, select) for q in queries]


def _check_lengths(rows: Sequence[list[int]], max_length: int | None, k: int) -> None:
    """ValueError if a row is longer than ``max_length`` tokens."""
    if max_length is None:
        return
    for i, row in enumerate(rows):
        if len(row) > max_length:
            raise ValueError(
                f"prompt row {i} is {len(row)} tokens, longer than max_length={max_length}: use "
                f"fewer demonstrations (k={k}), shorter inputs, or a model with a longer context"
            )


def _targets(tokenizer: Any, template: Template, queries: Sequence["Example"]) -> torch.Tensor:
    """First token of each query's answer as shown in the prompt."""
    out = []
    for q in queries:
        ids = tokenize_piece(tokenizer, _shown(template, q.output))
        if not ids:
            raise ValueError(f"the answer {q.output!r} of query {q.input!r} encodes to no tokens")
        out.append(ids[0])
    return torch.tensor(out, dtype=torch.long)

"""Copy-constrained greedy decoding, with copy speculation, batched across windows.

The output is the window's text with tags inserted, so at each step the model may only
continue the text exactly, write a valid tag, or end once everything is copied and
closed (`task.markup_grammar`). The constraint is on *bytes*, through a trie of the
vocabulary's token bytes: the text inside markup need not tokenize as the window alone
does, and byte-level vocabularies split characters.

Why hand-written: grammar libraries (llguidance, xgrammar, outlines) are not dependencies
of this project, and the grammar here contains the window's text, so it is a new grammar
per window; our automaton is a few lines, needs no compilation, and lets speculation
check a proposed token in a few microseconds.

Greedy choice under the constraint: the best of the tokens the grammar allows (the trie
walk), scored by projecting the hidden state on their output rows only. Speculation
proposes the next k tokens of the text still to copy (the tokenizer's own split of it),
feeds them in one forward pass with the KV cache, and keeps the longest prefix on which
that same choice agrees, plus the model's own token at the first disagreement: the
tokens are those of constrained greedy decoding, one token per forward pass or several.
The shared instruction prompt is run once; a finished window leaves the batch at once
and a waiting one takes its place. docs/extraction.md has the measurements.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from transformers import DynamicCache

from fedmedlora.model.loading import autocast
from fedmedlora.task.markup_grammar import MarkupGrammar, State

_END = 256  # trie key under which a node lists the tokens that end there


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (printable stand-ins -> bytes)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in repr(backend.decoder)


class Vocabulary:
    """Each token's bytes and a trie over them; built once per tokenizer."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids)
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        decoder = _byte_decoder() if _is_byte_level(tokenizer) else None
        self.token_bytes: list[bytes | None] = []
        for i, piece in enumerate(pieces):
            data: bytes | None = None
            if i not in special and piece is not None:
                if decoder is not None and all(c in decoder for c in piece):
                    data = bytes(decoder[c] for c in piece)
                elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
                    data = bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
                else:
                    data = piece.replace("\u2581", " ").encode("utf-8")
            self.token_bytes.append(data or None)
        self.root: dict = {}
        for i, data in enumerate(self.token_bytes):
            if data is None:
                continue
            node = self.root
            for b in data:
                node = node.setdefault(b, {})
            node.setdefault(_END, []).append(i)

    def allowed(self, grammar: MarkupGrammar, state: State) -> list[int]:
        """Every token whose bytes the grammar accepts from `state`."""
        out: list[int] = []
        stack = [(self.root, state)]
        while stack:
            node, s = stack.pop()
            for b in grammar.next_bytes(s):
                child = node.get(b)
                if child is None:
                    continue
                nxt = grammar.advance(s, b)
                if nxt is None:
                    continue
                out.extend(child.get(_END, ()))
                stack.append((child, nxt))
        return out


_VOCABS: dict[tuple[str, int], Vocabulary] = {}


def vocabulary(tokenizer) -> Vocabulary:
    key = (str(getattr(tokenizer, "name_or_path", id(tokenizer))), len(tokenizer))
    if key not in _VOCABS:
        _VOCABS[key] = Vocabulary(tokenizer)
    return _VOCABS[key]


def _cache_of(out):
    """The KV cache of a forward pass (transformers 5 renames `past_key_values`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class _Model:
    """The model as the decoder calls it: a block of tokens through the KV cache, then the
    logits of chosen tokens only. With a plain linear output layer the decoder projects
    just the rows of the tokens the grammar allows (1 to ~10 of SmolLM2's 49k; the full
    projection is a fifth of its compute per token). A monotone transform after that
    layer (soft-capping, scaling) does not change which allowed token is best. Other
    models (an adapted output layer, test doubles) give full logits."""

    def __init__(self, model, device: torch.device, precision: str):
        self.model, self.device, self.precision = model, device, precision
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        self.decoder = None
        if type(head) is torch.nn.Linear and hasattr(lm, "get_decoder"):
            self.decoder = lm.get_decoder()
            self.weight, self.bias = head.weight, head.bias

    def forward(self, ids, mask, positions, cache, *, last_only: bool = False):
        """Hidden states (logits without the split) of the block, and the cache."""
        kwargs = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "cache": cache,
            "use_cache": True,
        }
        with autocast(self.precision, self.device):
            if self.decoder is not None:
                out = self.decoder(**kwargs)
                states = out.last_hidden_state
            else:
                out = self.model(**kwargs, logits_to_keep=1 if last_only else 0)
                states = out.logits
        return (states[:, -1:] if last_only else states), _cache_of(out)

    def scores(self, states, where: list[int], groups: list[list[int]]) -> list[list[float]]:
        """Logits of the tokens `groups[n]` at flat position `where[n]` of `states`."""
        sizes = [len(g) for g in groups]
        flat = torch.tensor([t for g in groups for t in g], dtype=torch.long)
        at = torch.repeat_interleave(torch.tensor(where, dtype=torch.long), torch.tensor(sizes))
        states = states.reshape(-1, states.shape[-1])
        if self.decoder is None:
            values = states[at.to(states.device), flat.to(states.device)].float()
        else:
            rows = self.weight[flat.to(self.weight.device)]
            values = (states[at.to(states.device)].to(rows.dtype) * rows).sum(-1)
            if self.bias is not None:
                values = values + self.bias[flat.to(self.bias.device)]
        values = values.float().cpu().tolist()
        out, n = [], 0
        for size in sizes:
            out.append(values[n : n + size])
            n += size
        return out


@dataclass
class DecodeStats:
    generated_tokens: int = 0
    # Forward passes a window took part in, summed over windows (1 per token without
    # speculation; the shared prompt prefix counts for none); model calls counts calls.
    window_forwards: int = 0
    model_calls: int = 0
    # Token columns the model computed, padding and rejected proposals included (a pass
    # is rectangular), and the prompt tokens among them (the shared prefix once). A
    # window needs at least its prompt and its output tokens; of the rest,
    # `padded_columns` held no token (packing rows could remove them) and
    # `rejected_columns` held proposals the model did not accept. `passes` keeps each
    # model call's (columns, seconds): `benchmarks/extraction_speed.py` fits a pass's cost
    # to them and bounds what any schedule of this work could cost on the machine.
    columns: int = 0
    prompt_tokens: int = 0
    padded_columns: int = 0
    rejected_columns: int = 0
    passes: list[tuple[int, float]] = field(default_factory=list)

    def counted(self, columns: int, real: int, prompt_tokens: int, seconds: float) -> None:
        """One model call of `columns` columns: `real` of them tokens, `prompt_tokens`
        of those prompt."""
        self.model_calls += 1
        self.columns += columns
        self.padded_columns += columns - real
        self.prompt_tokens += prompt_tokens
        self.passes.append((columns, seconds))

    def add(self, other: DecodeStats) -> None:
        """Another run's counts added to these (a benchmark sums its calls)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class _BlockWidth:
    """How many tokens each row feeds per pass: the width that maximizes the expected
    tokens gained per second. A pass costs `a + b x columns` (rows x width, padding
    included: blocks are rectangular), fitted on this run's own passes; a proposal is
    accepted with the chance measured so far at its place in the block. On a loaded CPU,
    where a pass costs little beyond its columns, blocks stay short; where a pass has a
    large fixed cost (a GPU, an idle CPU at small batches), they grow to k. The width
    changes only how many forward passes the same tokens take, never the tokens."""

    PRIOR_OVERHEAD = 32.0  # a / b in columns, until passes of different sizes are timed
    PRIOR = (4.0, 1.0)  # pseudo-counts (accepted, rejected) of each place

    def __init__(self, k: int):
        self.k = k
        self.offered = [0] * (k + 1)  # at place i (1..k): proposals the model was asked about
        self.accepted = [0] * (k + 1)
        self.passes: list[tuple[int, float]] = []  # (columns, seconds), the latest 64

    def record(self, offered: int, accepted: int) -> None:
        """A row was offered `offered` proposals and accepted the first `accepted`."""
        for i in range(1, min(offered, accepted + 1) + 1):
            self.offered[i] += 1
            self.accepted[i] += i <= accepted

    def timed(self, columns: int, seconds: float) -> None:
        self.passes = [*self.passes[-63:], (columns, seconds)]

    def _overhead(self) -> float:
        """a / b of the fitted cost, in columns (least squares; the prior if unfit)."""
        n = len(self.passes)
        if n >= 4:
            mx = sum(c for c, _ in self.passes) / n
            my = sum(t for _, t in self.passes) / n
            var = sum((c - mx) ** 2 for c, _ in self.passes)
            if var > 0:
                b = sum((c - mx) * (t - my) for c, t in self.passes) / var
                if b > 0:
                    return max(0.0, (my - b * mx) / b)
        return self.PRIOR_OVERHEAD

    def choose(self, proposals: list[int]) -> int:
        """The number of proposals per row (0..k) for rows offering `proposals` each."""
        longest = max(proposals, default=0)
        if longest == 0:
            return 0
        good, bad = self.PRIOR
        reach, chance = [1.0], 1.0  # reach[i]: chance that proposals 1..i are accepted
        for i in range(1, longest + 1):
            chance *= (self.accepted[i] + good) / (self.offered[i] + good + bad)
            reach.append(chance)
        overhead = self._overhead()
        best, best_rate, gained = 0, 0.0, 0.0
        for m in range(longest + 1):  # m proposals: width m + 1
            gained = sum(1 + sum(reach[1 : min(m, p) + 1]) for p in proposals)
            rate = gained / (overhead + len(proposals) * (m + 1))
            if rate > best_rate:
                best, best_rate = m, rate
        return best


@dataclass
class _Row:
    grammar: MarkupGrammar
    state: State
    budget: int
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    pending: int | None = None
    done: bool = False
    # Proposal plan: the tokenizer's split of the text from `plan_pos` on.
    plan_pos: int = -1
    plan: list[tuple[int, int]] = field(default_factory=list)  # (token, byte position after)


class ConstrainedDecoder:
    """The batch: rows (windows being decoded), their KV cache, attention mask and
    lengths (real tokens, which give the next position id). Holes in the cache
    (padding, rejected proposals) are masked; a row that finishes leaves at once and a
    waiting window takes its place (`_drop_finished`, `_prefill`)."""

    def __init__(
        self,
        model,
        tokenizer,
        speculate_tokens: int,
        *,
        batch_size: int,
        device: torch.device,
        precision: str,
    ):
        self.tokenizer = tokenizer
        self.vocab = vocabulary(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.k = speculate_tokens
        self.width = _BlockWidth(speculate_tokens)
        self.lm = _Model(model, device, precision)
        self.device = device
        self.batch_size = batch_size
        self.rows: list[_Row] = []
        self.cache = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.lengths = torch.zeros(0, dtype=torch.long)
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.prefix_len = 0

    # --- the greedy choice under the constraint -----------------------------------
    def candidates(self, row: _Row, state: State, spent: int) -> list[int]:
        """Every token the grammar allows in `state` after `spent` tokens (end of
        sequence where it may end), sorted: the best of them is the greedy choice, the
        lowest id on a tie, as `argmax` over the full logits would pick."""
        g = row.grammar
        g.tokens_left = row.budget - spent - 1
        ids = self.vocab.allowed(g, state)
        if g.can_end(state):
            ids.append(self.eos)
        return sorted(ids)

    def _best(self, ids: list[int], scores: list[float]) -> int:
        if not ids:  # cannot happen with a byte-complete vocabulary; end rather than loop
            return self.eos
        return ids[max(range(len(ids)), key=scores.__getitem__)]

    def _after(self, row: _Row, state: State, token: int, spent: int) -> State:
        """The state after `token`, chosen among `candidates(row, state, spent)`."""
        if token == self.eos:
            return state
        row.grammar.tokens_left = row.budget - spent - 1
        nxt = row.grammar.advance_bytes(state, self.vocab.token_bytes[token])  # type: ignore[arg-type]
        assert nxt is not None
        return nxt

    # --- proposals --------------------------------------------------------------------
    def propose(self, row: _Row) -> list[int]:
        """The next tokens of the text still to copy, as the tokenizer splits it; inside
        a tag, the tag's forced continuation (`pan class="` after `<s`) first."""
        g = row.grammar
        pos, tag = row.state[0], row.state[3]
        room = min(self.k, row.budget - len(row.tokens) - 2)
        if room <= 0 or (pos >= len(g.target) and tag is None):
            return []
        if tag is not None:
            return self._propose_in_tag(row, room)
        index = next((i for i, (_, end) in enumerate(row.plan) if end == pos), None)
        if pos == row.plan_pos:
            index = -1
        if index is None:
            start = g.char_index.get(pos)
            if start is None:  # inside a multi-byte character: no proposal this step
                return []
            ids = self._encode(g.escaped[start:])
            row.plan_pos, row.plan, end = pos, [], pos
            for t in ids:
                data = self.vocab.token_bytes[t]
                if data is None or g.target[end : end + len(data)] != data:
                    break
                end += len(data)
                row.plan.append((t, end))
            index = -1
        return [t for t, _ in row.plan[index + 1 : index + 1 + room]]

    def _propose_in_tag(self, row: _Row, room: int) -> list[int]:
        g = row.grammar
        forced, after = g.forced(row.state)
        if not forced:
            return []
        text = forced.decode("ascii")
        if after[3] is None:  # the tag is complete: the text follows
            start = g.char_index.get(after[0])
            if start is not None:
                text += g.escaped[start : start + 16 * room]
        out: list[int] = []
        state: State | None = row.state
        for t in self._encode(text)[:room]:
            data = self.vocab.token_bytes[t]
            state = g.advance_bytes(state, data) if data is not None else None  # type: ignore[arg-type]
            if state is None:
                break
            out.append(t)
        return out

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids

    # --- the batch --------------------------------------------------------------------
    def _accept(self, row: _Row, token: int, state: State) -> None:
        row.pending, row.state = token, state
        if token == self.eos:
            row.done = True
        elif len(row.tokens) + 1 >= row.budget:
            row.tokens.append(token)
            row.pending, row.done = None, True

    def _prefill_prefix(self, prompts: list[list[int]], stats: DecodeStats) -> None:
        """The instruction prompt is the same for every window: its cache is computed
        once and copied into each new row (at least one token per row stays a suffix)."""
        n = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for p in prompts[1:]:
            n = next((i for i in range(n) if p[i] != first[i]), n)
        self.prefix_len, self.prefix = n, []
        if n == 0:
            return
        ids = torch.tensor([first[:n]], dtype=torch.long)
        began = time.perf_counter()
        _, cache = self.lm.forward(
            ids, torch.ones_like(ids), torch.arange(n)[None], DynamicCache(), last_only=True
        )
        stats.counted(n, n, n, time.perf_counter() - began)
        self.prefix = [(layer.keys, layer.values) for layer in cache.layers]

    def _prefill(self, new: list[_Row], stats: DecodeStats) -> None:
        """New rows: their prompts after the shared prefix (left-padded, so the last
        token is in the last column; the padding is a masked hole), their first token,
        and their cache joined to the batch's."""
        n, p = len(new), self.prefix_len
        ids, own = _padded([row.prompt[p:] for row in new], self.pad, left=True)
        mask = torch.cat([torch.ones((n, p), dtype=torch.long), own], dim=1)
        positions = p + (own.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(
            ddp_cache_data=[
                (k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self.prefix
            ]
        )
        began = time.perf_counter()
        states, cache = self.lm.forward(ids, mask, positions, cache, last_only=True)
        real = int(own.sum())
        stats.counted(ids.numel(), real, real, time.perf_counter() - began)
        stats.window_forwards += n
        groups = [self.candidates(row, row.state, 0) for row in new]
        scores = self.lm.scores(states, list(range(n)), groups)
        for row, g, s in zip(new, groups, scores, strict=True):
            token = self._best(g, s)
            self._accept(row, token, self._after(row, row.state, token, 0))
        lengths = mask.sum(-1)
        if not self.rows:
            self.rows, self.cache, self.mask, self.lengths = new, cache, mask, lengths
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_widen(mine.keys, width), _widen(theirs.keys, width)])
            mine.values = torch.cat([_widen(mine.values, width), _widen(theirs.values, width)])
        self.mask = torch.cat([_widen(self.mask, width), _widen(mask, width)])
        self.lengths = torch.cat([self.lengths, lengths])
        self.rows = self.rows + new

    def _step(self, stats: DecodeStats) -> None:
        """One forward pass: each row's pending token and its proposals."""
        blocks, paths, groups = [], [], []
        proposals = [self.propose(row) for row in self.rows]
        m = self.width.choose([len(p) for p in proposals])
        for row, proposed in zip(self.rows, proposals, strict=True):
            block = [row.pending, *proposed[:m]]
            path = [row.state]  # the state before choosing at each position
            spent = len(row.tokens) + 1
            for j in range(len(block)):
                groups.append(self.candidates(row, path[j], spent + j))
                if j + 1 == len(block):
                    break
                nxt = row.grammar.advance_bytes(path[j], self.vocab.token_bytes[block[j + 1]])  # type: ignore[arg-type]
                if nxt is None:  # not a proposal the grammar allows: stop the block here
                    del block[j + 1 :]
                    break
                path.append(nxt)
            blocks.append(block)
            paths.append(path)
        ids, block_mask = _padded(blocks, self.pad, left=False)
        w = ids.shape[1]
        where = [i * w + j for i, block in enumerate(blocks) for j in range(len(block))]
        positions = self.lengths[:, None] + torch.arange(w)[None, :]
        self.mask = torch.cat([self.mask, block_mask], dim=1)
        began = time.perf_counter()
        states, self.cache = self.lm.forward(ids, self.mask, positions, self.cache)
        stats.counted(ids.numel(), len(where), 0, time.perf_counter() - began)
        scores = self.lm.scores(states, where, groups)
        self.width.timed(ids.numel(), time.perf_counter() - began)
        stats.window_forwards += len(self.rows)
        n = 0
        for i, (row, block, path) in enumerate(zip(self.rows, blocks, paths, strict=True)):
            row.tokens.append(block[0])
            j = 0
            while True:
                token = self._best(groups[n + j], scores[n + j])
                if j + 1 < len(block) and token == block[j + 1]:
                    row.state = path[j + 1]
                    row.tokens.append(token)
                    j += 1
                    if len(row.tokens) >= row.budget:
                        row.done, row.pending = True, None
                        break
                    continue
                self._accept(row, token, self._after(row, path[j], token, len(row.tokens)))
                break
            n += len(block)
            stats.rejected_columns += len(block) - 1 - j
            self.width.record(len(block) - 1, j)
            self.mask[i, self.mask.shape[1] - w + j + 1 :] = 0  # rejected proposals: holes
            self.lengths[i] += j + 1
        self._compact()

    def _drop_finished(self) -> list[_Row]:
        done = [row for row in self.rows if row.done]
        if not done:
            return done
        keep = torch.tensor(
            [i for i, row in enumerate(self.rows) if not row.done], dtype=torch.long
        )
        self.rows = [row for row in self.rows if not row.done]
        self.mask, self.lengths = self.mask[keep], self.lengths[keep]
        if self.rows:
            self.cache.batch_select_indices(keep.to(self.device))
            self._compact()
        else:
            self.cache = None
        return done

    def _compact(self) -> None:
        """Move each row's real tokens to the front of the cache once holes are many
        (their order, hence the positions baked into the keys, is kept)."""
        real = self.mask.sum(-1)
        width = int(real.max())
        if self.mask.shape[1] - width <= max(16, width // 4):
            return
        order = torch.sort(1 - self.mask, dim=1, stable=True).indices[:, :width].to(self.device)
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self.mask = (torch.arange(width)[None, :] < real[:, None]).long()

    @torch.no_grad()
    def run(
        self,
        prompts: list[list[int]],
        grammars: list[MarkupGrammar],
        budgets: list[int],
        stats: DecodeStats,
        on_done: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Constrained greedy outputs. Windows enter in order of prompt length (less
        padding); a finished row leaves at once and waiting ones take free places,
        a quarter of the batch at a time (each entry is a forward pass of its own)."""
        rows = [
            _Row(g, g.start(), b, p) for p, g, b in zip(prompts, grammars, budgets, strict=True)
        ]
        waiting = sorted(range(len(rows)), key=lambda i: (len(prompts[i]), budgets[i]))
        waiting.reverse()  # popped from the end
        self._prefill_prefix(prompts, stats)
        refill = max(1, self.batch_size // 4)
        while waiting or self.rows:
            free = self.batch_size - len(self.rows)
            if waiting and free >= min(refill, len(waiting)):
                self._prefill([rows[waiting.pop()] for _ in range(min(free, len(waiting)))], stats)
            finished = self._drop_finished()
            if self.rows:
                self._step(stats)
                finished += self._drop_finished()
            if finished and on_done:
                on_done(len(finished))
        outputs = []
        for row in rows:
            data = b"".join(self.vocab.token_bytes[t] or b"" for t in row.tokens)
            stats.generated_tokens += len(row.tokens)
            outputs.append(data.decode("utf-8", errors="replace"))
        return outputs


def constrained_generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    grammars: list[MarkupGrammar],
    budgets: list[int],
    *,
    batch_size: int,
    speculate_tokens: int,
    device: torch.device,
    precision: str,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[str], DecodeStats]:
    """Constrained greedy outputs; `on_batch(n)` as n windows finish."""
    stats = DecodeStats()
    if not prompts:
        return [], stats
    decoder = ConstrainedDecoder(
        model,
        tokenizer,
        speculate_tokens,
        batch_size=batch_size,
        device=device,
        precision=precision,
    )
    return decoder.run(prompts, grammars, budgets, stats, on_batch), stats


def _widen(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` with masked holes appended along its sequence axis (a mask's last, a cache
    tensor's second last) up to `width`."""
    axis = t.dim() - 1 if t.dim() == 2 else t.dim() - 2
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - axis) + [0, missing]
    return torch.nn.functional.pad(t, pad)


def _padded(seqs: list[list[int]], pad: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one width (prompts on the left, so every row's next token is
    at the end; proposal blocks on the right, after each row's own cache) and their mask."""
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, q in enumerate(seqs):
        where = slice(width - len(q), width) if left else slice(0, len(q))
        ids[r, where] = torch.tensor(q, dtype=torch.long)
        mask[r, where] = 1
    return ids, mask

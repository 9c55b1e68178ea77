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

Greedy choice under the constraint: the model's top token if the grammar allows it (the
common case), else the best allowed token (the trie walk). Speculation proposes the next
k tokens of the text still to copy (the tokenizer's own split of it), feeds them in one
forward pass with the KV cache, and keeps the longest prefix on which that same choice
agrees, plus the model's own token at the first disagreement: the tokens are those of
constrained greedy decoding, one token per forward pass or several.

Batching: rows are left-padded; every step feeds each row a block of its pending token
and its proposals, padded to the widest; rejected and padded positions stay in the KV
cache as holes that the attention mask hides, and position ids count only real tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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


@dataclass
class DecodeStats:
    generated_tokens: int = 0
    # Forward passes a window took part in, summed over windows (1 per token without
    # speculation); model calls counts batched calls.
    window_forwards: int = 0
    model_calls: int = 0


@dataclass
class _Row:
    grammar: MarkupGrammar
    state: State
    budget: int
    tokens: list[int] = field(default_factory=list)
    pending: int | None = None
    done: bool = False
    # Proposal plan: the tokenizer's split of the text from `plan_pos` on.
    plan_pos: int = -1
    plan: list[tuple[int, int]] = field(default_factory=list)  # (token, byte position after)


class ConstrainedDecoder:
    def __init__(self, tokenizer, speculate_tokens: int):
        self.tokenizer = tokenizer
        self.vocab = vocabulary(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.k = speculate_tokens

    # --- the greedy choice under the constraint -----------------------------------
    def choose(self, logits: torch.Tensor, top: int, row: _Row) -> tuple[int, State]:
        """Greedy token and the state after it. `top` is logits.argmax() (computed
        for the whole block at once); it is the answer whenever the grammar allows it."""
        g, s = row.grammar, row.state
        g.tokens_left = row.budget - len(row.tokens) - 1
        if top == self.eos:
            if g.can_end(s):
                return top, s
        else:
            data = self.vocab.token_bytes[top]
            nxt = g.advance_bytes(s, data) if data is not None else None
            if nxt is not None:
                return top, nxt
        ids = sorted(self.vocab.allowed(g, s))
        if g.can_end(s):
            ids = sorted([*ids, self.eos])
        if not ids:  # cannot happen with a byte-complete vocabulary; end rather than loop
            return self.eos, s
        best = ids[int(logits[torch.tensor(ids)].argmax())]
        if best == self.eos:
            return best, s
        nxt = g.advance_bytes(s, self.vocab.token_bytes[best])  # type: ignore[arg-type]
        assert nxt is not None
        return best, nxt

    # --- proposals --------------------------------------------------------------------
    def propose(self, row: _Row) -> list[int]:
        """The next tokens of the text still to copy, as the tokenizer splits it; inside
        a tag, the tag's forced continuation (`pan class="` after `<s`) first."""
        g = row.grammar
        pos, _, _, tag, _ = row.state
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

    # --- the batched loop -------------------------------------------------------------
    def _accept(self, row: _Row, token: int, state: State) -> None:
        row.pending, row.state = token, state
        if token == self.eos:
            row.done = True
        elif len(row.tokens) + 1 >= row.budget:
            row.tokens.append(token)
            row.pending, row.done = None, True

    @torch.no_grad()
    def run(
        self,
        model,
        prompts: list[list[int]],
        grammars: list[MarkupGrammar],
        budgets: list[int],
        device: torch.device,
        precision: str,
        stats: DecodeStats,
    ) -> list[str]:
        rows = [_Row(g, g.start(), b) for g, b in zip(grammars, budgets, strict=True)]
        ids, mask = _padded(prompts, self.pad, left=True)
        lengths = mask.sum(-1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with autocast(precision, device):
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                logits_to_keep=1,  # the vocabulary projection of every prompt token is waste
            )
        cache = _cache_of(out)
        stats.model_calls += 1
        stats.window_forwards += len(rows)
        logits = out.logits[:, -1].float().cpu()
        tops = logits.argmax(-1).tolist()
        for r, row in enumerate(rows):
            self._accept(row, *self.choose(logits[r], tops[r], row))
        live = list(range(len(rows)))  # rows still in the batch tensors, in order
        while True:
            keep = [i for i, r in enumerate(live) if not rows[r].done]
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep)
                cache.batch_select_indices(index.to(device))
                mask, lengths = mask[index], lengths[index]
                live = [live[i] for i in keep]
            blocks = [[rows[r].pending, *self.propose(rows[r])] for r in live]
            block, block_mask = _padded(blocks, self.pad, left=False)
            w = block.shape[1]
            positions = lengths[:, None] + torch.arange(w)[None, :]
            mask = torch.cat([mask, block_mask], dim=1)
            with autocast(precision, device):
                out = model(
                    input_ids=block.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    cache=cache,
                    use_cache=True,
                )
            cache = _cache_of(out)
            stats.model_calls += 1
            stats.window_forwards += len(live)
            logits = out.logits.float().cpu()
            tops = logits.argmax(-1).tolist()
            for i, r in enumerate(live):
                row, b = rows[r], blocks[i]
                row.tokens.append(b[0])
                j = 0
                while True:
                    token, state = self.choose(logits[i, j], tops[i][j], row)
                    if j + 1 < len(b) and token == b[j + 1] and not row.done:
                        row.state = state
                        row.tokens.append(token)
                        j += 1
                        if len(row.tokens) >= row.budget:
                            row.done, row.pending = True, None
                        continue
                    if not row.done:
                        self._accept(row, token, state)
                    break
                mask[i, mask.shape[1] - w + j + 1 :] = 0  # rejected proposals: holes
                lengths[i] += j + 1
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
    """Constrained greedy outputs, batched by prompt length to limit padding."""
    decoder = ConstrainedDecoder(tokenizer, speculate_tokens)
    stats = DecodeStats()
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), budgets[i]))
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = decoder.run(
            model,
            [prompts[i] for i in idx],
            [grammars[i] for i in idx],
            [budgets[i] for i in idx],
            device,
            precision,
            stats,
        )
        for i, text in zip(idx, texts, strict=True):
            outputs[i] = text
        if on_batch:
            on_batch(len(idx))
    return outputs, stats


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

"""The language of *faithful* markup for one window, as a byte-level automaton.

A faithful output is the window's (HTML-escaped) text, copied exactly, with tags
inserted (docs/markup.md):

- an opening tag `<span class="TYPE" ...>` of a type the prompt asks for; a main entity
  carries `id="N"` with N the next number in order of appearance, a modifier may carry
  `ref="N M"` (`ref="TYPE:N"` for a relation type other than the schema's default);
- a closing `</span>` for a span that is open and not empty.

Tags go only between characters of the window (never inside `&lt;` or a multi-byte
character, nor between two letters or two digits), open before a non-blank character
and close after one, so every span maps to a trimmed, non-empty stretch of the source.
The output ends (end-of-sequence is allowed) only once the text is fully copied and every
span closed.

Bytes, not characters: a byte-level BPE vocabulary has tokens that are parts of one
UTF-8 character, and the decoder must be able to copy them.

A state is a plain tuple `(pos, opened, next_id, tag, may_open)`, cheap to create,
because the decoder steps it once per byte of every candidate token:
- `pos`: bytes of the escaped window copied so far;
- `opened`: for each open span (innermost last), the position where it began;
- `next_id`: the id the next main entity gets;
- `tag`: the bytes after `<` of a tag being written, or None between tags;
- `may_open`: whether the tag being written may be an opening one.

A decoder with a token budget sets `tokens_left` before each step: a tag may then open
only while the budget can still pay for the tag, every close and one token per byte of
the text left, so even a model that tags every word ends exactly at the window's end.
"""

from __future__ import annotations

import html

from fedmedlora.data.schema import Schema

State = tuple[int, tuple[int, ...], int, bytes | None, bool]

LT, GT, SPACE, QUOTE, COLON = (ord(c) for c in '<> ":')
DIGITS = frozenset(b"0123456789")
NONZERO = frozenset(b"123456789")
CLOSE = b"/span>"
REF_OPEN = b' ref="'
# The bounds admit the gold markup of all but 1 of ~3000 real-corpus windows (MACCROBAT,
# Chia, BC5CDR; that one has 11 refs); they also stop a model that keeps opening tags at
# one position from looping.
MAX_DEPTH = 5
MAX_REFS = 8
MAX_REF_DIGITS = 2


class MarkupGrammar:
    """Faithful markup of `text` with spans of `entity_types` only."""

    def __init__(self, text: str, entity_types: list[str], schema: Schema):
        self.text = text
        escaped = html.escape(text, quote=False)
        self.escaped = escaped
        self.target = escaped.encode("utf-8")
        n = len(self.target)
        # Byte positions where a tag may go: a character of `text` starts (or ends) here.
        self.boundary = bytearray(n + 1)
        self.char_index: dict[int, int] = {}  # byte position -> index into `escaped`
        pos = 0
        in_entity = False
        # Tags open before a non-blank character and close after one.
        self.blank_at = bytearray(n + 1)
        self.blank_before = bytearray(n + 1)
        for i, ch in enumerate(escaped):
            self.char_index[pos] = i
            if ch == "&":
                in_entity = True
                self.boundary[pos] = 1
            elif not in_entity:
                self.boundary[pos] = 1
            if ch == ";":
                in_entity = False
            size = len(ch.encode("utf-8"))
            self.blank_at[pos] = ch.isspace()
            self.blank_before[pos + size] = ch.isspace()
            pos += size
        self.char_index[pos] = len(escaped)
        self.boundary[n] = 1
        # No tag between two letters or two digits: a model that wants to write other
        # text than the window's would otherwise tag single characters, one after another.
        # (Gold markup of 0.6% of real-corpus windows puts a tag there, e.g.
        # `<span>examinatio</span>n`: annotation slips, given up for that.)
        at = 0
        for i, ch in enumerate(text):
            if i and (
                (ch.isalpha() and text[i - 1].isalpha()) or (ch.isdigit() and text[i - 1].isdigit())
            ):
                self.boundary[at] = 0
            at += len(html.escape(ch, quote=False).encode("utf-8"))
        types = [t for t in schema.entity_types if t in set(entity_types)]
        self.main_heads = [f'span class="{t}"'.encode() for t in types if schema.is_main(t)]
        self.mod_heads = [f'span class="{t}"'.encode() for t in types if not schema.is_main(t)]
        rel_types = schema.relation_types
        # ref="TYPE:N" for relations other than the default one (docs/markup.md).
        self.rel_prefixes = [f"{r}:".encode() for r in rel_types[1:]]
        longest = max((len(h) for h in self.main_heads + self.mod_heads), default=0)
        self.max_tag = (
            longest
            + 16
            + MAX_REFS * (MAX_REF_DIGITS + 2 + max((len(p) for p in self.rel_prefixes), default=0))
        )
        # closable_after[p]: a span open at p can still close later (some q > p follows
        # a non-blank character at a place a tag may go). Without it, a span left open
        # into a window's trailing blanks could never close: a dead end, which the
        # decoder would leave as an unclosed tag and uncopied text.
        self.closable_after = bytearray(n + 2)
        for q in range(n - 1, -1, -1):
            after = q + 1
            self.closable_after[q] = self.closable_after[after] or (
                self.boundary[after] and not self.blank_before[after]
            )
        self.tokens_left: int | None = None
        self._tag_memo: dict[tuple, frozenset[int]] = {}

    # --- states -------------------------------------------------------------------
    def start(self) -> State:
        return (0, (), 1, None, False)

    def can_end(self, state: State) -> bool:
        pos, opened, _, tag, _ = state
        return tag is None and not opened and pos == len(self.target)

    def _can_open(self, pos: int, opened: tuple[int, ...]) -> bool:
        return (
            pos < len(self.target)
            and len(opened) < MAX_DEPTH
            and self.boundary[pos]
            and not self.blank_at[pos]
        )

    def token_budget(self, tag_tokens: int) -> int:
        """A token cap that always leaves room to copy the text byte by byte, finish a
        tag and close every span, plus `tag_tokens` for the tags themselves."""
        return len(self.target) + self.max_tag + (len(CLOSE) + 1) * (MAX_DEPTH + 1) + 3 + tag_tokens

    def _affordable(self, pos: int, opened: tuple[int, ...]) -> bool:
        if self.tokens_left is None:
            return True
        closes = len(CLOSE) + 1
        need = len(self.target) - pos + closes * (len(opened) + 1) + self.max_tag + 2
        return self.tokens_left > need

    def _can_close(self, pos: int, opened: tuple[int, ...]) -> bool:
        return (
            bool(opened) and opened[-1] < pos and self.boundary[pos] and not self.blank_before[pos]
        )

    def _may_copy(self, pos: int, opened: tuple[int, ...]) -> bool:
        """The next byte of text may be copied: open spans can still close after it."""
        return pos < len(self.target) and (not opened or bool(self.closable_after[pos]))

    def next_bytes(self, state: State) -> list[int]:
        """The bytes that may come next (a small set: the decoder walks the vocabulary
        trie only along these)."""
        pos, opened, next_id, tag, may_open = state
        if tag is None:
            out = [self.target[pos]] if self._may_copy(pos, opened) else []
            if self._can_close(pos, opened) or (
                self._can_open(pos, opened) and self._affordable(pos, opened)
            ):
                out.append(LT)
            return out
        return sorted(self._tag_next(tag, pos, opened, next_id, may_open))

    def advance(self, state: State, byte: int) -> State | None:
        """The state after `byte`, or None where `byte` is not allowed."""
        pos, opened, next_id, tag, may_open = state
        if tag is None:
            if self._may_copy(pos, opened) and byte == self.target[pos]:
                return (pos + 1, opened, next_id, None, False)
            if byte == LT:
                may = self._can_open(pos, opened) and self._affordable(pos, opened)
                if may or self._can_close(pos, opened):
                    return (pos, opened, next_id, b"", may)
            return None
        if byte not in self._tag_next(tag, pos, opened, next_id, may_open):
            return None
        if byte != GT:
            return (pos, opened, next_id, tag + bytes((byte,)), may_open)
        if tag == CLOSE[:-1]:
            return (pos, opened[:-1], next_id, None, False)
        is_main = any(tag.startswith(h + b" ") or tag == h for h in self.main_heads)
        return (pos, (*opened, pos), next_id + (1 if is_main else 0), None, False)

    def forced(self, state: State) -> tuple[bytes, State]:
        """The bytes a tag being written must continue with (e.g. `pan class="` after
        `<s`), up to its first choice, and the state after them."""
        out = bytearray()
        while state[3] is not None:
            options = self.next_bytes(state)
            if len(options) != 1:
                break
            out.append(options[0])
            state = self.advance(state, options[0])  # type: ignore[assignment]
        return bytes(out), state

    def advance_bytes(self, state: State, data: bytes) -> State | None:
        for b in data:
            state = self.advance(state, b)  # type: ignore[assignment]
            if state is None:
                return None
        return state

    # --- tags ---------------------------------------------------------------------
    def _tag_next(
        self, tag: bytes, pos: int, opened: tuple[int, ...], next_id: int, may_open: bool
    ) -> frozenset[int]:
        """Bytes allowed after `<` + `tag` (a hand-written parser: the tag language is
        tiny, and a general grammar engine would be rebuilt for every window). Memoized:
        the decoder asks for the same few tags over and over."""
        key = (tag, may_open, self._can_close(pos, opened), next_id)
        found = self._tag_memo.get(key)
        if found is None:
            found = self._tag_memo[key] = frozenset(self._tag_options(*key))
        return found

    def _tag_options(self, tag: bytes, may_open: bool, can_close: bool, next_id: int) -> set[int]:
        fixed: list[bytes] = []
        if can_close:
            fixed.append(CLOSE)
        mains: list[bytes] = []
        if may_open:
            mains = [h + f' id="{next_id}"'.encode() for h in self.main_heads]
            fixed += mains + self.mod_heads
        out: set[int] = set()
        n = len(tag)
        for f in fixed:
            if len(f) > n and f.startswith(tag):
                out.add(f[n])
            elif f == tag and f != CLOSE:
                out.add(GT)
                if f in self.mod_heads:
                    out.add(SPACE)
        for head in self.mod_heads:
            if tag.startswith(head) and len(tag) > len(head):
                out |= self._refs_next(tag[len(head) :])
        return out

    def _refs_next(self, rest: bytes) -> set[int]:
        """After a modifier's head: ` ref="R( R)*"` then `>`; R = [TYPE:]N."""
        if len(rest) < len(REF_OPEN):
            return {REF_OPEN[len(rest)]} if REF_OPEN.startswith(rest) else set()
        if not rest.startswith(REF_OPEN):
            return set()
        body = rest[len(REF_OPEN) :]
        if body.endswith(b'"'):
            return {GT} if body.count(b'"') == 1 else set()
        refs = body.split(b" ")
        if len(refs) > MAX_REFS or any(not self._ref_ok(r) for r in refs[:-1]):
            return set()
        last = refs[-1]
        out = {p[len(last)] for p in self.rel_prefixes if len(p) > len(last) and p.startswith(last)}
        number = last
        for p in self.rel_prefixes:
            if last.startswith(p):
                number = last[len(p) :]
                break
        if not number:
            return out | NONZERO
        if not number.isdigit():
            return out
        if len(number) < MAX_REF_DIGITS:
            out |= DIGITS
        out.add(QUOTE)
        if len(refs) < MAX_REFS:
            out.add(SPACE)
        return out

    def _ref_ok(self, ref: bytes) -> bool:
        for p in self.rel_prefixes:
            if ref.startswith(p):
                ref = ref[len(p) :]
                break
        return 0 < len(ref) <= MAX_REF_DIGITS and ref.isdigit() and ref[0] != ord("0")

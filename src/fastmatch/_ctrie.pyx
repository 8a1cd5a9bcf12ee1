# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The compiled segment trie.

Every node of the trie is an entry of one open-addressing hash table, keyed by
the hash of its path from the root: a child is found by hashing its parent's
path hash with the child's segment (``*`` is a segment like any other). So the
slots of the whole literal path of an event type are known before the walk
starts, and are prefetched together: a match waits for memory about once, not
once per level, however many patterns there are. An entry is one cache line and
holds all that a match reads of its node, the node's keys included.

One pass over the event type's buffer validates and splits it; no substring
object is made. Results are cached per event type in a small two-way
set-associative table; ``add`` and ``remove`` empty it.
"""

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject, PyObject_Hash
from cpython.ref cimport Py_INCREF, Py_XDECREF, Py_XINCREF
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

import os
from types import GenericAlias

from fastmatch._contract import explain

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    void* PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void* address) nogil

cdef extern from *:
    """
    #include <string.h>
    /* Eight bytes as a little-endian number, so that hashes do not depend on the CPU. */
    static inline uint64_t fm_load64(const char *p) {
        uint64_t word;
        memcpy(&word, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        word = __builtin_bswap64(word);
    #endif
        return word;
    }
    /* memcmp(a, b, n) == 0 without a call for the short texts of segments: two
       words that may overlap cover 8 to 16 bytes, and a few bytes take a loop. */
    static inline int fm_same(const char *a, const char *b, size_t n) {
        if (n > 16)
            return memcmp(a, b, n) == 0;
        if (n >= 8)
            return fm_load64(a) == fm_load64(b)
                && fm_load64(a + n - 8) == fm_load64(b + n - 8);
        for (size_t i = 0; i < n; i++)
            if (a[i] != b[i])
                return 0;
        return 1;
    }
    """
    uint64_t load64 "fm_load64"(const char* p) nogil
    bint same "fm_same"(const char* a, const char* b, size_t n) nogil

cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    /* One bit per byte of the 16 at p that is not a literal character (a letter,
       a digit, '_', '-' or '.'). The bytes are ASCII, so signed compares do. */
    static inline unsigned fm_others16(const char *p) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        __m128i folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
        __m128i letter = _mm_and_si128(_mm_cmpgt_epi8(folded, _mm_set1_epi8('a' - 1)),
                                       _mm_cmplt_epi8(folded, _mm_set1_epi8('z' + 1)));
        __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)),
                                      _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
        __m128i punct = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('-')), _mm_cmpeq_epi8(v, _mm_set1_epi8('.'))),
            _mm_cmpeq_epi8(v, _mm_set1_epi8('_')));
        __m128i literal = _mm_or_si128(_mm_or_si128(letter, digit), punct);
        return ~(unsigned)_mm_movemask_epi8(literal) & 0xFFFFu;
    }
    #endif

    /* Where the characters other than literal ones are in the ASCII text data[:n]:
       the first `cap` positions go to marks, which has room for cap + 1. Returns
       how many there are, or at least cap + 1 when there are more than cap.
       Sixteen bytes at a time where SSE2 is. */
    static inline Py_ssize_t fm_scan(const char *data, Py_ssize_t n, Py_ssize_t *marks,
                                     Py_ssize_t cap, const unsigned char *classes) {
        Py_ssize_t count = 0, base = 0;
    #if defined(__SSE2__)
        char tail[16];
        for (; base < n; base += 16) {
            unsigned others;
            if (n - base >= 16) {
                others = fm_others16(data + base);
            } else {  /* the last bytes, padded with a literal: never read past the text */
                memset(tail, 'a', 16);
                memcpy(tail, data + base, (size_t)(n - base));
                others = fm_others16(tail);
            }
            for (; others; others &= others - 1) {
                if (count == cap)
                    return cap + 1;
                marks[count++] = base + __builtin_ctz(others);
            }
        }
    #else
        for (; base < n; base++) {  /* branch-free: every position is noted, few are kept */
            marks[count < cap ? count : cap] = base;  /* marks[cap] is scratch */
            count += classes[(unsigned char)data[base]] != 0;
        }
    #endif
        return count;
    }
    """
    Py_ssize_t scan "fm_scan"(const char* data, Py_ssize_t n, Py_ssize_t* marks, Py_ssize_t cap,
                              const uint8_t* classes) nogil

cdef extern from *:
    """
    #if defined(__SSE2__)
    #define FM_SCAN "sse2"
    #else
    #define FM_SCAN "bytes"
    #endif
    """
    const char* FM_SCAN

SCAN = FM_SCAN.decode()  # how this build scans a text: "sse2", or "bytes" where there is no SSE2

cdef enum:
    LEVELS = 4
    MAX_FRONTIER = 16  # 2 ** LEVELS: each level can branch into a literal and '*'
    MAX_MARKS = 8      # 3 separators and 4 wildcards at most in a valid pattern
    INLINE = 16        # segments up to this many bytes live in the entry itself
    PREFETCH_WILDCARDS_FROM = 1 << 14  # slots: a table this large (1 MiB) no longer stays in cache
    LITERAL_CHAR = 0
    INVALID_CHAR = 1
    STAR_CHAR = 2
    COLON_CHAR = 3

cdef uint8_t CHAR_CLASS[256]
cdef int _c
for _c in range(256):
    CHAR_CLASS[_c] = INVALID_CHAR
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.":
    CHAR_CLASS[_c] = LITERAL_CHAR
CHAR_CLASS[ord("*")] = STAR_CHAR
CHAR_CLASS[ord(":")] = COLON_CHAR

cdef uint64_t MIX = 0x9E3779B97F4A7C15ULL
# A per-process seed, so that nobody can choose segments that collide on purpose.
cdef uint64_t HASH_SEED = int.from_bytes(os.urandom(8), "little") | 1


cdef inline uint64_t segment_hash(const char* data, Py_ssize_t start, Py_ssize_t length) noexcept nogil:
    """Hash ``data[start:start + length]`` eight bytes at a time.

    ``data`` must hold at least eight bytes, which every valid text does (with
    its terminating NUL): the last few bytes of a segment are read as one word
    that may begin before the segment, so no loop runs byte by byte.
    """
    cdef uint64_t h = HASH_SEED ^ <uint64_t>length
    cdef Py_ssize_t i = start, end = start + length, rest
    cdef uint64_t word
    while end - i >= 8:
        h = (h ^ load64(data + i)) * MIX
        h ^= h >> 29
        i += 8
    rest = end - i
    if rest:
        if end >= 8:
            word = load64(data + end - 8) >> (64 - 8 * rest)
        else:
            word = (load64(data) >> (8 * i)) & ((1ULL << (8 * rest)) - 1)
        h = (h ^ word) * MIX
        h ^= h >> 29
    return h


cdef inline uint64_t child_hash(uint64_t parent, uint64_t segment) noexcept nogil:
    """The path hash of a child: its parent's path hash extended by one segment."""
    cdef uint64_t h = (parent ^ (parent >> 31)) * MIX + segment
    h ^= h >> 32
    h *= 0xD6E8FEB86659FD93ULL
    return h ^ (h >> 32)


cdef uint64_t STAR_HASH = segment_hash(b"*:*:*:*", 0, 1)


cdef struct Segments:
    const char* data
    Py_ssize_t start[LEVELS]
    Py_ssize_t length[LEVELS]
    uint64_t hash[LEVELS]


cdef inline bint split(object text, Segments* out, bint allow_star) noexcept:
    """Validate ``text``, find its segments and hash them; False if invalid.

    The scan only notes where the characters other than literal ones are, many
    bytes at a time; those few are checked after.
    """
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    if n < 7 or not PyUnicode_IS_ASCII(text):  # "a:b:c:d" is the shortest valid text
        return False
    cdef const char* data = <const char*>PyUnicode_DATA(text)
    cdef Py_ssize_t marks[MAX_MARKS]
    cdef Py_ssize_t i, k, count = 0, start = 0
    cdef int level = 0
    cdef uint8_t kind
    count = scan(data, n, marks, MAX_MARKS - 1, CHAR_CLASS)
    if count >= MAX_MARKS:
        return False
    out.data = data
    for k in range(count + 1):
        i = marks[k] if k < count else n  # the end of the text closes the last segment
        kind = CHAR_CLASS[<uint8_t>data[i]] if k < count else COLON_CHAR
        if kind == STAR_CHAR:
            if not allow_star or i != start or (i + 1 < n and data[i + 1] != b":"):
                return False  # a wildcard must be a whole segment
            continue
        if kind != COLON_CHAR or i == start or level == LEVELS:
            return False
        out.start[level] = start
        out.length[level] = i - start
        out.hash[level] = segment_hash(data, start, i - start)
        level += 1
        start = i + 1
    return level == LEVELS


cdef struct Entry:
    # One trie node, one cache line. Its slot is its path hash; empty slots have id 0.
    uint64_t hash       # path hash
    uint64_t id         # unique for the index's lifetime; the root is 0 and has no entry
    uint64_t parent     # the parent's id
    PyObject* keys      # leaves: the key itself if there is one, else a tuple; owned
    uint64_t children   # inner nodes: which children may exist, see literal_bit
    uint32_t length     # of the segment
    uint32_t count      # inner nodes: children; leaves: keys held
    char text[INLINE]   # the segment when it fits, else a pointer to an owned copy


cdef enum:
    STAR_CHILD = 1  # the bit of Entry.children set exactly while a '*' child exists


cdef inline uint64_t literal_bit(uint64_t segment) noexcept nogil:
    """The bit of ``Entry.children`` that a literal child with this segment hash sets.

    One of 63 bits, picked by the hash, and left set after the child is removed
    (another child may share it): a clear bit proves there is no such child,
    which spares a match the probe of a miss (the long one in a table this full),
    mostly below wildcards, where the children are few.
    """
    return 2ULL << (((segment >> 32) * 63) >> 32)  # a 32-bit number scaled to 0..62


cdef inline bint is_star(Segments* segs, int level) noexcept:
    return segs.length[level] == 1 and segs.data[segs.start[level]] == b"*"


cdef inline const char* entry_text(Entry* entry) noexcept nogil:
    if entry.length <= INLINE:
        return &entry.text[0]
    return (<char**>entry.text)[0]


cdef struct Table:
    Entry* slots
    uint64_t mask       # capacity - 1; capacity is a power of two
    Py_ssize_t used


cdef inline Entry* find(Table* table, uint64_t h, uint64_t parent, const char* text,
                        Py_ssize_t length) noexcept nogil:
    cdef uint64_t i = h & table.mask
    cdef Entry* entry
    while True:
        entry = &table.slots[i]
        if entry.id == 0:
            return NULL
        if (entry.hash == h and entry.parent == parent and entry.length == length
                and same(entry_text(entry), text, length)):
            return entry
        i = (i + 1) & table.mask


cdef int grow(Table* table) except -1:
    cdef uint64_t old_capacity = table.mask + 1 if table.slots != NULL else 0
    cdef uint64_t capacity = old_capacity * 2 if old_capacity else 64
    cdef Entry* old = table.slots
    cdef Entry* slots = <Entry*>calloc(capacity, sizeof(Entry))
    cdef uint64_t k, i
    if slots == NULL:
        raise MemoryError()
    for k in range(old_capacity):
        if old[k].id != 0:
            i = old[k].hash & (capacity - 1)
            while slots[i].id != 0:
                i = (i + 1) & (capacity - 1)
            slots[i] = old[k]
    free(old)
    table.slots = slots
    table.mask = capacity - 1
    return 0


cdef Entry* insert(Table* table, uint64_t h, uint64_t id, uint64_t parent, const char* text,
                   Py_ssize_t length) except NULL:
    if table.slots == NULL or (table.used + 1) * 4 > <Py_ssize_t>(table.mask + 1) * 3:
        grow(table)
    cdef char* copy = NULL
    if length > INLINE:
        copy = <char*>malloc(length)
        if copy == NULL:
            raise MemoryError()
        memcpy(copy, text, length)
    cdef uint64_t i = h & table.mask
    while table.slots[i].id != 0:
        i = (i + 1) & table.mask
    cdef Entry* entry = &table.slots[i]
    entry.hash = h
    entry.id = id
    entry.parent = parent
    entry.keys = NULL
    entry.length = <uint32_t>length
    entry.children = 0
    entry.count = 0
    if copy != NULL:
        (<char**>entry.text)[0] = copy
    else:
        memcpy(entry.text, text, length)
    table.used += 1
    return entry


cdef void delete(Table* table, Entry* entry) noexcept:
    """Remove ``entry``, shifting later probes back so that no tombstone is left."""
    cdef uint64_t mask = table.mask
    cdef uint64_t i = <uint64_t>(entry - table.slots), j = i, home
    if entry.length > INLINE:
        free((<char**>entry.text)[0])
    while True:
        j = (j + 1) & mask
        if table.slots[j].id == 0:
            break
        home = table.slots[j].hash & mask
        # The entry at j may fill the hole at i unless its home lies cyclically in (i, j].
        if (home > i and home <= j) if i <= j else (home > i or home <= j):
            continue
        table.slots[i] = table.slots[j]
        i = j
    table.slots[i].id = 0
    table.used -= 1


cdef struct Cached:
    Py_hash_t hash          # of the event type, so a miss reads no string
    PyObject* event_type    # owned; NULL marks a free way
    PyObject* keys          # as in Entry, owned
    Py_ssize_t count


cdef inline list keys_list(PyObject* keys, Py_ssize_t count):
    """A new list of the keys held as an entry holds them."""
    if count == 1:
        result = PyList_New(1)
        Py_INCREF(<object>keys)
        PyList_SET_ITEM(result, 0, <object>keys)
        return result
    if count == 0:
        return []
    return list(<tuple>keys)


cdef inline bint holds(Cached* way, Py_hash_t h, object text) noexcept:
    """Whether ``way`` holds the result for ``text``; cached texts are all ASCII."""
    if way.event_type == <PyObject*>text:
        return True
    if way.hash != h or way.event_type == NULL:
        return False
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    return (PyUnicode_GET_LENGTH(<object>way.event_type) == n and PyUnicode_IS_ASCII(text)
            and memcmp(PyUnicode_DATA(<object>way.event_type), PyUnicode_DATA(text), n) == 0)


cdef inline void release(Cached cached) noexcept:
    Py_XDECREF(cached.event_type)
    Py_XDECREF(cached.keys)


cdef inline str exact_str(object text):
    """``text`` as a plain ``str`` (a subclass could hash and compare its own way), or None."""
    if type(text) is str:
        return <str>text
    if isinstance(text, str):
        return str.__str__(text)
    return None


cdef class PatternIndex:
    """Event-type patterns mapped to keys, matched by a compiled segment trie."""

    cdef Table _table
    cdef Entry _root            # never in the table; only its children's count and filter are used
    cdef uint64_t _next_id
    cdef Py_ssize_t _entries
    cdef dict _leaf_keys        # pattern -> dict of its keys, in insertion order
    cdef Cached* _cache         # sets of two ways, the newer result first
    cdef uint64_t _cache_mask   # sets - 1, or no cache when _cache is NULL
    cdef Py_ssize_t _cached
    cdef Py_hash_t* _seen       # hashes of types that missed once: only a second miss is cached
    # The root and its chain of '*' children ("*", "*:*", ...), NULL past the last:
    # every match walks them, so they are found once per change of the trie, not
    # once per match. Entries move when the table changes; add and remove mark it.
    cdef Entry* _stars[LEVELS + 1]
    cdef bint _stars_stale

    def __cinit__(self, Py_ssize_t cache_size=4096):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        grow(&self._table)
        self._root.hash = HASH_SEED
        self._stars_stale = True
        self._next_id = 1
        self._leaf_keys = {}
        cdef uint64_t sets = 1
        if cache_size:
            while sets * 2 < <uint64_t>cache_size:
                sets *= 2
            self._cache = <Cached*>calloc(sets * 2, sizeof(Cached))
            self._seen = <Py_hash_t*>calloc(sets * 2, sizeof(Py_hash_t))
            if self._cache == NULL or self._seen == NULL:
                raise MemoryError()
            self._cache_mask = sets - 1

    def __dealloc__(self):
        cdef uint64_t i
        self._clear_cache()
        free(self._cache)
        free(self._seen)
        if self._table.slots == NULL:
            return
        for i in range(self._table.mask + 1):
            if self._table.slots[i].id != 0:
                if self._table.slots[i].length > INLINE:
                    free((<char**>self._table.slots[i].text)[0])
                Py_XDECREF(self._table.slots[i].keys)
        free(self._table.slots)

    __class_getitem__ = classmethod(GenericAlias)

    def __len__(self):
        return self._entries

    def __repr__(self):
        return f"<PatternIndex (cython) entries={self._entries}>"

    cdef inline Entry* _child(self, Entry* node, Segments* segs, int level) noexcept:
        return find(&self._table, child_hash(node.hash, segs.hash[level]), node.id,
                    segs.data + segs.start[level], segs.length[level])

    # A key's own __hash__ and __eq__ may run any code, even code that changes
    # this index and so moves its entries: add and remove run them before they
    # hold any entry, and release objects only after they are done with entries.

    def add(self, pattern, key):
        """Map ``pattern`` to ``key``; adding a pair that is already there changes nothing."""
        cdef Segments segs
        cdef Entry* node = &self._root
        cdef Entry* child
        cdef PyObject* old = NULL
        cdef int level
        text = exact_str(pattern)
        if text is None or not split(text, &segs, True):
            raise explain(pattern, what="pattern")
        keys = self._leaf_keys.get(text)
        if keys is None:
            keys = {}
        elif key in keys:
            return
        keys[key] = None  # an unhashable key fails here, before the trie changes
        self._leaf_keys[text] = keys
        self._stars_stale = True  # entries may move from here on, even if the add fails
        try:
            for level in range(LEVELS):
                child = self._child(node, &segs, level)
                if child == NULL:
                    child = self._add_child(node, &segs, level)
                node = child
            self._set_keys(node, keys, &old)
        except MemoryError:
            # Nodes made on the way stay, empty, and are harmless; the key is not added.
            del keys[key]
            if not keys:
                del self._leaf_keys[text]
            raise
        self._entries += 1
        Py_XDECREF(old)
        self._clear_cache()

    def remove(self, pattern, key):
        """Unmap ``key`` from ``pattern``; ``KeyError`` if that pair is not there."""
        cdef Segments segs
        cdef Entry* node = &self._root
        cdef Entry* parent
        cdef PyObject* old = NULL
        cdef uint64_t path[LEVELS + 1]  # path hashes and ids: entries move as others are deleted
        cdef uint64_t ids[LEVELS + 1]
        cdef int level
        text = exact_str(pattern)
        if text is None or not split(text, &segs, True):
            raise explain(pattern, what="pattern")
        keys = self._leaf_keys.get(text)
        if keys is None or key not in keys:
            raise KeyError((pattern, key))
        del keys[key]
        if not keys:
            del self._leaf_keys[text]
        path[0] = node.hash
        ids[0] = 0
        self._stars_stale = True  # entries may move from here on
        for level in range(LEVELS):
            node = self._child(node, &segs, level)
            path[level + 1] = node.hash
            ids[level + 1] = node.id
        try:
            self._set_keys(node, keys, &old)
        except MemoryError:
            keys[key] = None  # the leaf still holds the key: so must the record of its keys
            self._leaf_keys[text] = keys
            raise
        # Prune the branch bottom-up while it holds nothing.
        for level in range(LEVELS, 0, -1):
            node = self._locate(path[level], ids[level])
            if node.count:
                break
            delete(&self._table, node)
            parent = self._locate(path[level - 1], ids[level - 1])
            parent.count -= 1
            if is_star(&segs, level - 1):
                parent.children &= ~(<uint64_t>STAR_CHILD)
        self._entries -= 1
        Py_XDECREF(old)
        self._clear_cache()

    cdef Entry* _add_child(self, Entry* node, Segments* segs, int level) except NULL:
        """Insert ``node``'s child for ``segs[level]`` and count it on ``node``: in
        that order, so that an insert that fails leaves ``node`` as it was."""
        cdef uint64_t parent_hash = node.hash, parent_id = node.id
        cdef Entry* child = insert(&self._table, child_hash(parent_hash, segs.hash[level]),
                                   self._next_id, parent_id,
                                   segs.data + segs.start[level], segs.length[level])
        self._next_id += 1
        node = self._locate(parent_hash, parent_id)  # the insert may have moved every entry
        node.children |= STAR_CHILD if is_star(segs, level) else literal_bit(segs.hash[level])
        node.count += 1
        return child

    cdef Entry* _locate(self, uint64_t h, uint64_t id) noexcept:
        if id == 0:
            return &self._root
        cdef uint64_t i = h & self._table.mask
        while self._table.slots[i].id != id:
            i = (i + 1) & self._table.mask
        return &self._table.slots[i]

    cdef void _set_keys(self, Entry* leaf, dict keys, PyObject** old) except *:
        """Hold a lone key as itself, which saves a match one memory access, else a
        tuple; the previous holding goes to ``old``, for the caller to release. The
        tuple is made first: if that fails, the leaf is left as it was."""
        cdef object held = tuple(keys) if len(keys) > 1 else None
        if len(keys) == 1:
            held = next(iter(keys))
        old[0] = leaf.keys
        leaf.keys = NULL
        if keys:
            Py_INCREF(held)
            leaf.keys = <PyObject*>held
        leaf.count = <uint32_t>len(keys)

    def match(self, event_type, /):
        """The keys of every pattern that matches ``event_type``, each key once."""
        return self._match(event_type)

    def match_many(self, event_types, /):
        """``match`` for each event type of a batch, in one call."""
        return [self._match(event_type) for event_type in event_types]

    cdef list _match(self, object event_type):
        cdef Cached* ways = NULL
        cdef Py_hash_t text_hash = 0
        if self._cache != NULL and isinstance(event_type, str):
            text_hash = PyObject_Hash(event_type)
            ways = &self._cache[(<uint64_t>text_hash & self._cache_mask) * 2]
            if holds(&ways[0], text_hash, event_type):
                return keys_list(ways[0].keys, ways[0].count)
            if holds(&ways[1], text_hash, event_type):
                return keys_list(ways[1].keys, ways[1].count)
        cdef Segments segs
        if not isinstance(event_type, str) or not split(event_type, &segs, False):
            raise explain(event_type, what="event type")
        cdef Table* table = &self._table
        cdef uint64_t path[LEVELS + 1]  # the path hashes of the literal path
        cdef int level, i, width = 1, count = 0
        # The literal path's slots are known now: let memory fetch them all at once.
        path[0] = self._root.hash
        for level in range(LEVELS):
            path[level + 1] = child_hash(path[level], segs.hash[level])
            prefetch(&table.slots[path[level + 1] & table.mask])
        # And in a table too large to stay in cache, those of the shape most patterns
        # have, a literal head then wildcards to the end ("orders:shipment:*:*"):
        # else a match waits for memory once more at each level below the head.
        cdef uint64_t star_path
        if table.mask + 1 >= PREFETCH_WILDCARDS_FROM:
            for level in range(1, LEVELS):
                star_path = path[level]
                for i in range(level, LEVELS):
                    star_path = child_hash(star_path, STAR_HASH)
                    prefetch(&table.slots[star_path & table.mask])
        if self._stars_stale:
            self._find_stars()
        cdef Entry** stars = self._stars
        cdef Entry* buffers[2][MAX_FRONTIER]
        cdef Entry** frontier = buffers[0]
        cdef Entry** reached = buffers[1]
        cdef Entry* node
        cdef Entry* child
        cdef uint64_t literal
        frontier[0] = &self._root
        for level in range(LEVELS):
            count = 0
            literal = literal_bit(segs.hash[level])
            for i in range(width):
                node = frontier[i]
                if node.children & literal:
                    child = find(table, path[level + 1] if node.hash == path[level]
                                 else child_hash(node.hash, segs.hash[level]),
                                 node.id, segs.data + segs.start[level], segs.length[level])
                    if child != NULL:
                        reached[count] = child
                        count += 1
                if node.children & STAR_CHILD:
                    reached[count] = (stars[level + 1] if node == stars[level] else
                                      find(table, child_hash(node.hash, STAR_HASH), node.id, b"*", 1))
                    count += 1
            if count == 0:
                break
            frontier, reached = reached, frontier
            width = count
        cdef PyObject* keys = NULL
        cdef Py_ssize_t held = 0
        if count == 1:
            keys = frontier[0].keys
            held = frontier[0].count
        elif count > 1:
            # Copy out first: merging runs the keys' own __hash__, which may change the trie.
            parts = [keys_list(frontier[i].keys, frontier[i].count) for i in range(count)]
            merged = {}
            for part in parts:
                for key in part:
                    merged[key] = None
            union = tuple(merged)
            keys = <PyObject*>union
            held = len(union)
            if held == 1:
                keys = <PyObject*>union[0]
        if ways != NULL:
            self._remember(ways, text_hash, event_type, keys, held)
        return keys_list(keys, held)

    cdef void _find_stars(self) noexcept:
        cdef int level
        cdef Entry* node = &self._root
        self._stars[0] = node
        for level in range(LEVELS):
            if node != NULL and node.children & STAR_CHILD:
                node = find(&self._table, child_hash(node.hash, STAR_HASH), node.id, b"*", 1)
            else:
                node = NULL
            self._stars[level + 1] = node
        self._stars_stale = False

    cdef void _remember(self, Cached* ways, Py_hash_t text_hash, object event_type, PyObject* keys,
                        Py_ssize_t count) noexcept:
        """Put a result first in its set, moving the older one to the second way.

        Only on a type's second miss: a type seen once is noted by its hash alone,
        so traffic of one-off types neither evicts the hot ones nor pays for
        evicting (evicted objects are cold, and releasing them is a cache miss).
        """
        cdef Py_hash_t* seen = &self._seen[<uint64_t>text_hash & (self._cache_mask * 2 + 1)]
        if seen[0] != text_hash:
            seen[0] = text_hash
            return
        cdef Cached evicted = ways[1]
        ways[1] = ways[0]
        Py_INCREF(event_type)
        Py_XINCREF(keys)
        ways[0].hash = text_hash
        ways[0].event_type = <PyObject*>event_type
        ways[0].keys = keys
        ways[0].count = count
        if evicted.event_type == NULL:
            self._cached += 1
        release(evicted)  # last: releasing can run arbitrary code

    cdef void _clear_cache(self) noexcept:
        """Forget every cached result: subscriptions change rarely, and a burst of
        changes then costs one pass, not one per change."""
        cdef uint64_t i
        cdef Cached cached
        if self._cached == 0:
            return
        self._cached = 0
        for i in range((self._cache_mask + 1) * 2):
            cached = self._cache[i]
            self._cache[i].event_type = NULL
            self._cache[i].keys = NULL
            release(cached)

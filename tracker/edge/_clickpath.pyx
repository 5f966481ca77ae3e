# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The click core compiled: `clickpath.PyClickPath` for C (see clickpath.py).

The common click (GET or HEAD of /c/{slug} for an active link without routing rules or
campaign caps, a request head of printable ASCII, IPv4 addresses, no no-track signal, no
percent-encoded query keys) is read and answered here on the bytes llhttp validated: the
headers it needs are found by a scan of the head (no dict of every header), and the
destination, the ClickHouse row, the Redis record and the HTTP answer are written into
one buffer. What does not change per click (the link's JSON fields, its template split at
its macros) is prepared once per link. Every other request, and every case above that
this code does not handle itself, goes to the reference implementation before anything
is recorded, so both give the same bytes.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeASCII
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

import ipaddress
from urllib.parse import unquote_plus

import orjson

from tracker import ids, records
from tracker.edge import client_ip as _client_ip
from tracker.macros import compile_template
from tracker.http_limits import MAX_FIELD, MAX_HEADERS, MAX_LINE

cdef Py_ssize_t C_MAX_LINE = MAX_LINE
cdef Py_ssize_t C_MAX_FIELD = MAX_FIELD
cdef Py_ssize_t C_MAX_HEADERS = MAX_HEADERS
cdef Py_ssize_t MAX_PARAM = records.MAX_PARAM
cdef Py_ssize_t MAX_HEADER = records.MAX_HEADER
cdef Py_ssize_t MAX_URL = records.MAX_URL
cdef Py_ssize_t MAX_COOKIE = 4096  # clicks.MAX_COOKIE_HEADER (checked at import below)

# The kept query parameters, in the row's column order (records.KEPT_PARAMS).
cdef int NPARAMS = 13
_PARAM_NAMES = [name.encode() for name in records.KEPT_PARAMS]
assert len(_PARAM_NAMES) == 13 and records.KEPT_PARAMS[:5] == records.SUB_KEYS

# Headers the click needs, found by a scan of the head (lower-case names).
DEF H_UA = 0
DEF H_REFERER = 1
DEF H_LANG = 2
DEF H_COOKIE = 3
DEF H_XFF = 4
DEF H_DNT = 5
DEF H_GPC = 6
DEF H_LENGTH = 7
DEF H_TE = 8
DEF NHEADERS = 9
_HEADER_NAMES = [
    b"user-agent", b"referer", b"accept-language", b"cookie", b"x-forwarded-for", b"dnt",
    b"sec-gpc", b"content-length", b"transfer-encoding",
]
# ',"sub1":' ... : the row's and the record's keys of the kept parameters
_PARAM_KEYS = [b',"' + name + b'":' for name in _PARAM_NAMES]

# The names above as C arrays (the lists keep the bytes alive with the module).
cdef const char* PARAM_C[13]
cdef Py_ssize_t PARAM_LEN[13]
cdef const char* PARAM_KEY_C[13]
cdef Py_ssize_t PARAM_KEY_LEN[13]
cdef const char* HEADER_C[NHEADERS]
cdef Py_ssize_t HEADER_LEN[NHEADERS]
for _k in range(13):
    PARAM_C[_k] = PyBytes_AS_STRING(_PARAM_NAMES[_k])
    PARAM_LEN[_k] = PyBytes_GET_SIZE(_PARAM_NAMES[_k])
    PARAM_KEY_C[_k] = PyBytes_AS_STRING(_PARAM_KEYS[_k])
    PARAM_KEY_LEN[_k] = PyBytes_GET_SIZE(_PARAM_KEYS[_k])
for _k in range(NHEADERS):
    HEADER_C[_k] = PyBytes_AS_STRING(_HEADER_NAMES[_k])
    HEADER_LEN[_k] = PyBytes_GET_SIZE(_HEADER_NAMES[_k])

# Macro names of a destination template, as numbers (macros.MACROS).
DEF M_CLICK = 0
DEF M_VISITOR = 1
DEF M_CAMPAIGN = 2
DEF M_AFFILIATE = 3
DEF M_SUB = 4  # sub1..sub5: 4..8
_MACRO_NUMBERS = {
    "click_id": M_CLICK, "visitor_id": M_VISITOR, "campaign_id": M_CAMPAIGN,
    "affiliate_id": M_AFFILIATE, "sub1": 4, "sub2": 5, "sub3": 6, "sub4": 7, "sub5": 8,
}

cdef bytes HEX = b"0123456789ABCDEF"
cdef bytes HEX_LOWER = b"0123456789abcdef"


cdef inline bint unreserved(unsigned char c) nogil:
    """Characters `quote(value, safe="")` leaves alone."""
    return (
        (c >= c'a' and c <= c'z') or (c >= c'A' and c <= c'Z') or (c >= c'0' and c <= c'9')
        or c == c'_' or c == c'.' or c == c'-' or c == c'~'
    )


cdef inline unsigned char lower(unsigned char c) nogil:
    return c + 32 if c >= c'A' and c <= c'Z' else c


# Eight bytes at a time (SWAR): whether a word holds a byte that needs a closer look. Each
# test is exact as a yes/no (the counts it would give may be off, never the answer).
cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)

cdef extern from *:
    """
    #define TRACKER_ONES 0x0101010101010101ULL
    #define TRACKER_HIGHS 0x8080808080808080ULL
    """
    const uint64_t ONES "TRACKER_ONES"
    const uint64_t HIGHS "TRACKER_HIGHS"


cdef inline uint64_t _load8(const char* p) noexcept nogil:
    cdef uint64_t w
    memcpy(&w, p, 8)
    return w


cdef inline uint64_t _has_zero(uint64_t w) noexcept nogil:
    return (w - ONES) & ~w & HIGHS


cdef inline uint64_t _has_control(uint64_t w) noexcept nogil:
    """A byte under 0x20."""
    return (w - ONES * 0x20) & ~w & HIGHS


cdef inline bint _json_plain8(uint64_t w) noexcept nogil:
    """No byte JSON escapes (`"`, `\\`, controls) among these eight."""
    return not (_has_control(w) | _has_zero(w ^ (ONES * 0x22)) | _has_zero(w ^ (ONES * 0x5C)))


cdef inline bint _printable8(uint64_t w) noexcept nogil:
    """All eight are printable ASCII (0x20-0x7E)."""
    return not (_has_control(w) | (w & HIGHS) | _has_zero(w ^ (ONES * 0x7F)))


@cython.final  # its methods called directly, so the C compiler inlines put and reserve
cdef class _Buffer:
    """A growable byte buffer: the destination, row, record and answer are written in turn."""

    cdef char* data
    cdef Py_ssize_t size
    cdef Py_ssize_t cap

    def __cinit__(self):
        self.cap = 16384
        self.data = <char*>PyMem_Malloc(self.cap)
        if self.data == NULL:
            raise MemoryError()
        self.size = 0

    def __dealloc__(self):
        PyMem_Free(self.data)

    cdef inline int reserve(self, Py_ssize_t more) except -1:
        if self.size + more <= self.cap:
            return 0
        return self._grow(self.size + more)

    cdef int _grow(self, Py_ssize_t need) except -1:
        cdef char* grown
        while self.cap < need:
            self.cap *= 2
        grown = <char*>PyMem_Realloc(self.data, self.cap)
        if grown == NULL:
            raise MemoryError()
        self.data = grown
        return 0

    cdef inline int put(self, const char* src, Py_ssize_t n) except -1:
        self.reserve(n)
        memcpy(self.data + self.size, src, n)
        self.size += n
        return 0

    cdef inline int put_bytes(self, bytes src) except -1:
        return self.put(PyBytes_AS_STRING(src), PyBytes_GET_SIZE(src))

    cdef int put_int(self, long long value) except -1:
        cdef char digits[24]
        cdef int n = 0
        cdef bint negative = value < 0
        if negative:
            value = -value
        while True:
            digits[23 - n] = <char>(c'0' + value % 10)
            n += 1
            value //= 10
            if value == 0:
                break
        if negative:
            digits[23 - n] = c'-'
            n += 1
        return self.put(&digits[24 - n], n)

    cdef int put_json(self, const char* src, Py_ssize_t n) except -1:
        """A JSON string as orjson writes it (UTF-8 as is; `"`, `\\` and controls escaped)."""
        cdef Py_ssize_t i
        cdef unsigned char c
        cdef char* out
        self.reserve(2 + 6 * n)
        out = self.data + self.size
        out[0] = c'"'
        out += 1
        i = 0
        while i < n:
            if i + 8 <= n and _json_plain8(_load8(src + i)):  # the usual case: copied
                memcpy(out, src + i, 8)
                out += 8
                i += 8
                continue
            c = <unsigned char>src[i]
            i += 1
            if c == c'"' or c == c'\\':
                out[0] = c'\\'
                out[1] = c
                out += 2
            elif c < 0x20:
                out[0] = c'\\'
                if c == 0x08:
                    out[1] = c'b'
                elif c == 0x09:
                    out[1] = c't'
                elif c == 0x0A:
                    out[1] = c'n'
                elif c == 0x0C:
                    out[1] = c'f'
                elif c == 0x0D:
                    out[1] = c'r'
                else:
                    out[1] = c'u'
                    out[2] = c'0'
                    out[3] = c'0'
                    out[4] = HEX_LOWER[c >> 4]
                    out[5] = HEX_LOWER[c & 15]
                    out += 4
                out += 2
            else:
                out[0] = c
                out += 1
        out[0] = c'"'
        out += 1
        self.size = out - self.data
        return 0

    cdef int put_quoted(self, const char* src, Py_ssize_t n) except -1:
        """A macro value percent-encoded, as `quote(value, safe="")`."""
        cdef Py_ssize_t i
        cdef unsigned char c
        cdef char* out
        self.reserve(3 * n)
        out = self.data + self.size
        for i in range(n):
            c = <unsigned char>src[i]
            if unreserved(c):
                out[0] = c
                out += 1
            else:
                out[0] = c'%'
                out[1] = HEX[c >> 4]
                out[2] = HEX[c & 15]
                out += 3
        self.size = out - self.data
        return 0

    cdef bytes take(self, Py_ssize_t start):
        return PyBytes_FromStringAndSize(self.data + start, self.size - start)


cdef class _Link:
    """What a link's clicks share, prepared on its first click."""

    cdef object link
    cdef bint plain  # served here: active, no routing rules, an ASCII template
    cdef bytes fields  # '"link_slug":..,"campaign_id":..,"affiliate_id":..,"advertiser_id":..'
    cdef list literals  # the template split at its macros (bytes)
    cdef list macros  # macro numbers between the literals
    cdef bint has_click_id
    cdef bytes campaign_q  # campaign and affiliate ids percent-encoded for the template
    cdef bytes affiliate_q
    cdef list hot_values  # slug, campaign, affiliate, advertiser as JSON strings (hot.encode)
    cdef int hot_last  # the last of those that is not empty, -1 if none

    def __init__(self, link):
        self.link = link
        template = link.destination
        self.plain = link.active and link.routing is None and template.isascii()
        if not self.plain:
            return
        fields = orjson.dumps(
            {
                "link_slug": link.slug,
                "campaign_id": link.campaign_id,
                "affiliate_id": link.affiliate_id,
                "advertiser_id": link.advertiser_id,
            }
        )
        self.fields = fields[1 : len(fields) - 1]  # without the braces
        literals, names, has_click_id = compile_template(template)
        self.literals = [literal.encode() for literal in literals]
        self.macros = [_MACRO_NUMBERS[name] for name in names]
        self.has_click_id = has_click_id
        self.campaign_q = _quoted(link.campaign_id)
        self.affiliate_q = _quoted(link.affiliate_id)
        texts = [link.slug, link.campaign_id, link.affiliate_id, link.advertiser_id]
        self.hot_values = [orjson.dumps(text or "") for text in texts]
        self.hot_last = max((i for i, text in enumerate(texts) if text), default=-1)


cdef bytes _quoted(str value):
    cdef _Buffer buf = _Buffer()
    cdef bytes raw = value.encode()
    buf.put_quoted(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
    return buf.take(0)


cdef bint _parse_ip4(const char* s, Py_ssize_t n, uint32_t* out) noexcept nogil:
    """A dotted-quad IPv4 address as `ipaddress.IPv4Address` accepts it (no leading zeros)."""
    cdef uint32_t value = 0
    cdef uint32_t octet
    cdef int parts = 0
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t begin
    while True:
        begin = i
        octet = 0
        while i < n and s[i] >= c'0' and s[i] <= c'9':
            octet = octet * 10 + <uint32_t>(s[i] - c'0')
            i += 1
            if i - begin > 3:
                return False
        if i == begin or octet > 255 or (i - begin > 1 and s[begin] == c'0'):
            return False
        value = (value << 8) | octet
        parts += 1
        if i == n:
            break
        if s[i] != c'.' or parts == 4:
            return False
        i += 1
    if parts != 4:
        return False
    out[0] = value
    return True


# What a hop of X-Forwarded-For (or the peer) is: an IPv4 address, something
# `client_ip._parse` would refuse, or something only it can read (IPv6).
DEF IP4 = 0
DEF BAD = 1
DEF OTHER = 2


cdef int _hop(const char* s, Py_ssize_t n, uint32_t* ip, Py_ssize_t* start, Py_ssize_t* length) noexcept nogil:
    """client_ip._parse on printable ASCII: strip, drop a `:port`, read an IPv4 address."""
    cdef Py_ssize_t a = 0
    cdef Py_ssize_t b = n
    cdef Py_ssize_t i
    cdef Py_ssize_t colon = -1
    cdef int colons = 0
    while a < b and s[a] == c' ':
        a += 1
    while b > a and s[b - 1] == c' ':
        b -= 1
    if a < b and s[a] == c'[':
        return OTHER
    for i in range(a, b):
        if s[i] == c':':
            colons += 1
            if colon < 0:
                colon = i
    if colons > 1:
        return OTHER
    if colons == 1:
        b = colon
    start[0] = a
    length[0] = b - a
    return IP4 if _parse_ip4(s + a, b - a, ip) else BAD


cdef class ClickPath:
    """The compiled click core; see clickpath.PyClickPath for the contract."""

    cdef readonly object ctx
    cdef object py  # the reference, for every request not served here
    cdef object uuid7
    cdef object date_header
    cdef long date_second  # the second `date_line` was made for (time.time()'s clock)
    cdef bytes date_line
    cdef object click_key  # ("/c/{slug}", 302): the request counter's key
    cdef dict links_seen  # slug -> _Link
    cdef object links_items  # the link cache's dict those were prepared from
    cdef list trusted  # [(network, netmask)] of the IPv4 trusted proxies
    cdef bint any_trusted
    cdef bytes cookie_name
    cdef bytes cookie_prefix  # b"Set-Cookie: name="
    cdef bytes cookie_attrs
    cdef _Buffer buf
    cdef uint32_t nets[64]
    cdef uint32_t masks[64]
    cdef int nnets
    cdef bint ips_in_python

    def __init__(self, ctx):
        from tracker.edge import clickpath

        self.ctx = ctx
        self.py = clickpath.PyClickPath(ctx)
        self.uuid7 = ids.uuid7
        self.date_header = clickpath.date_header
        self.date_second = -1
        self.date_line = b""
        self.click_key = (clickpath.CLICK_ROUTE, 302)
        self.links_seen = {}
        self.links_items = None
        self.buf = _Buffer()
        self.cookie_name = ctx.cookie_name.encode()
        self.cookie_prefix = b"Set-Cookie: " + self.cookie_name + b"="
        self.cookie_attrs = ctx.cookie_attrs.encode()
        self.any_trusted = bool(ctx.trusted)
        self.ips_in_python = False
        self.nnets = 0
        for net in ctx.trusted:
            if isinstance(net, ipaddress.IPv4Network) and self.nnets < 64:
                self.nets[self.nnets] = int(net.network_address)
                self.masks[self.nnets] = int(net.netmask)
                self.nnets += 1
            elif isinstance(net, ipaddress.IPv4Network):  # more than fit: the reference's
                self.ips_in_python = True

    cdef bytes _date_line(self):
        """The reference's Date header, asked for once a second: the clock read in C
        (time.time()'s, CLOCK_REALTIME) instead of a Python call per click."""
        cdef timespec now
        clock_gettime(CLOCK_REALTIME, &now)
        if now.tv_sec != self.date_second:
            self.date_line = (<str>self.date_header()).encode()
            self.date_second = now.tv_sec
        return self.date_line

    def handle(self, buffer, Py_ssize_t start, Py_ssize_t end, peer, bint keep_alive):
        """The answer to the request head buffer[start:end], or HAND_OVER / TOO_LARGE."""
        answer = self._click(buffer, start, end, peer, keep_alive)
        if answer is None:
            return self.py.handle(buffer, start, end, peer, keep_alive)
        return answer

    cdef bint _trusted(self, uint32_t ip):
        cdef int k
        for k in range(self.nnets):
            if ip & self.masks[k] == self.nets[k]:
                return True
        return False

    cdef _Link _link(self, str slug):
        """The prepared link of this slug, or None when the cache has no such link."""
        items = self.ctx.links.items
        if items is not self.links_items:  # the cache reloaded: prepare links anew
            self.links_seen = {}
            self.links_items = items
        cdef PyObject* found = PyDict_GetItem(items, slug)
        if found == NULL:
            return None
        link = <object>found
        cdef PyObject* seen = PyDict_GetItem(self.links_seen, slug)
        cdef _Link prepared
        if seen != NULL and (<_Link>seen).link is link:
            return <_Link>seen
        prepared = _Link(link)
        self.links_seen[slug] = prepared
        return prepared

    cdef object _click(self, buffer, Py_ssize_t start, Py_ssize_t end, peer, bint keep_alive):
        cdef const char* base
        cdef Py_ssize_t size
        if type(buffer) is bytearray:
            base = PyByteArray_AS_STRING(buffer)
            size = PyByteArray_GET_SIZE(buffer)
        elif type(buffer) is bytes:
            base = PyBytes_AS_STRING(buffer)
            size = PyBytes_GET_SIZE(buffer)
        else:
            return None
        if start < 0 or end > size or end <= start:
            return None
        cdef const char* h = base + start
        cdef Py_ssize_t n = end - start
        cdef Py_ssize_t i, j, k, line_end, colon
        cdef unsigned char c

        # printable ASCII only (lines end in CRLF): decoding and cleaning change nothing
        i = 0
        while i < n:
            if i + 8 <= n and _printable8(_load8(h + i)):
                i += 8
                continue
            c = <unsigned char>h[i]
            if (c < 0x20 or c > 0x7E) and c != c'\r' and c != c'\n':
                return None
            i += 1

        # request line: METHOD SP+ target SP ...
        cdef const char* found = <const char*>memchr(h, c'\r', n)
        line_end = n if found == NULL else found - h
        cdef bint is_head
        if line_end >= 4 and memcmp(h, b"GET ", 4) == 0:
            is_head = False
            i = 4
        elif line_end >= 5 and memcmp(h, b"HEAD ", 5) == 0:
            is_head = True
            i = 5
        else:
            return None
        while i < line_end and h[i] == c' ':
            i += 1
        cdef Py_ssize_t url_start = i
        found = <const char*>memchr(h + i, c' ', line_end - i)
        i = line_end if found == NULL else found - h
        cdef Py_ssize_t url_len = i - url_start
        if url_len > C_MAX_LINE or url_len < 4:
            return None
        cdef const char* url = h + url_start
        if memcmp(url, b"/c/", 3) != 0:
            return None
        cdef Py_ssize_t path_len = 3
        while path_len < url_len and url[path_len] != c'?':
            if url[path_len] == c'/' or url[path_len] == c'%':
                return None
            path_len += 1
        if path_len == 3:
            return None
        cdef const char* query = url + path_len + 1
        cdef Py_ssize_t query_len = url_len - path_len - 1 if path_len < url_len else 0

        # headers: the first of each name wins, as in the reference
        cdef const char* hv[NHEADERS]
        cdef Py_ssize_t hl[NHEADERS]
        for k in range(NHEADERS):
            hv[k] = NULL
            hl[k] = 0
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t name_len, value_start
        i = line_end + 2
        while i < n:
            # the line's end, then its first colon (memchr: a byte loop over the head
            # was 2,000 instructions a click)
            found = <const char*>memchr(h + i, c'\r', n - i)
            j = n if found == NULL else found - h
            found = <const char*>memchr(h + i, c':', j - i)
            if found == NULL:
                return None
            colon = found - h
            name_len = colon - i
            value_start = colon + 1
            while value_start < j and h[value_start] == c' ':
                value_start += 1
            total += name_len + (j - value_start)
            if j - value_start > C_MAX_FIELD or total > C_MAX_HEADERS:
                return None
            for k in range(NHEADERS):
                if HEADER_LEN[k] == name_len and hv[k] == NULL and _same_name(
                    h + i, HEADER_C[k], name_len
                ):
                    hv[k] = h + value_start
                    hl[k] = j - value_start
                    break
            i = j + 2

        if hv[H_TE] != NULL or (hv[H_LENGTH] != NULL and not (hl[H_LENGTH] == 1 and hv[H_LENGTH][0] == c'0')):
            return None
        ctx = self.ctx
        cdef bint honor = ctx.honor_no_track
        if honor and (
            (hl[H_DNT] == 1 and hv[H_DNT][0] == c'1') or (hl[H_GPC] == 1 and hv[H_GPC][0] == c'1')
        ):
            return None
        if ctx.ip_keys is not None:
            return None

        # the kept query parameters (records.parse_query): the first of a name wins
        cdef const char* pv[13]
        cdef Py_ssize_t pl[13]
        decoded = [None] * 13  # values that needed percent-decoding, as UTF-8 bytes
        for k in range(13):
            pv[k] = NULL
            pl[k] = 0
        cdef Py_ssize_t part, key_end, part_end
        cdef bint complex_value
        if query_len and query_len <= ctx.max_query_bytes:
            part = 0
            while part <= query_len:
                found = <const char*>memchr(query + part, c'&', query_len - part)
                part_end = query_len if found == NULL else found - query
                if part_end > part:
                    key_end = part
                    while key_end < part_end and query[key_end] != c'=':
                        if query[key_end] == c'%' or query[key_end] == c'+':
                            return None  # a key to decode: the reference
                        key_end += 1
                    if honor and key_end - part == 8 and memcmp(query + part, b"no-track", 8) == 0:
                        return None
                    k = _param_number(query + part, key_end - part)
                    if k >= 0 and pv[k] == NULL:
                        j = key_end + 1 if key_end < part_end else part_end
                        pv[k] = query + j
                        pl[k] = part_end - j
                        complex_value = False
                        for i in range(j, part_end):
                            if query[i] == c'%' or query[i] == c'+':
                                complex_value = True
                                break
                        if complex_value:
                            text = records.clean(
                                unquote_plus(
                                    PyUnicode_DecodeASCII(query + j, part_end - j, NULL),
                                    errors="replace",
                                ),
                                MAX_PARAM,
                            )
                            decoded[k] = text.encode()
                        elif pl[k] > MAX_PARAM:
                            pl[k] = MAX_PARAM
                part = part_end + 1

        # the link
        slug = PyUnicode_DecodeASCII(url + 3, path_len - 3, NULL)
        cdef _Link link = self._link(slug)
        if link is None or not link.plain:
            return None
        ccaps = ctx.campaign_caps
        if ccaps is not None and ccaps.items and ccaps.items.get(link.link.campaign_id) is not None:
            return None

        # the client's address (client_ip.client_ip)
        cdef uint32_t ip4
        cdef Py_ssize_t ip_start = 0, ip_len = 0
        cdef const char* ip_src = NULL
        cdef int kind
        ip_text = None
        cdef const char* peer_c
        cdef Py_ssize_t peer_len
        if self.ips_in_python or type(peer) is not str or not PyUnicode_IS_ASCII(peer):
            kind = OTHER
        else:  # an ASCII str holds its text as bytes: read there
            peer_c = PyUnicode_AsUTF8AndSize(peer, &peer_len)
            kind = _hop(peer_c, peer_len, &ip4, &ip_start, &ip_len)
            ip_src = peer_c + ip_start
        if kind == IP4:
            if hl[H_XFF] and self.any_trusted and self._trusted(ip4):
                kind = _walk(self, hv[H_XFF], hl[H_XFF], &ip4, &ip_src, &ip_len)
        elif kind == BAD:
            ip_text = "::"
        if kind == OTHER:
            ip_text = _client_ip.client_ip(
                peer,
                PyUnicode_DecodeASCII(hv[H_XFF], hl[H_XFF], NULL) if hv[H_XFF] != NULL else None,
                ctx.trusted,
            )
            if not (<str>ip_text).isascii():
                return None
        cdef bytes ip_bytes = ip_text.encode() if ip_text is not None else PyBytes_FromStringAndSize(ip_src, ip_len)

        # the visitor (clicks.read_cookie)
        cdef const char* vid_src = NULL
        if hv[H_COOKIE] != NULL and 0 < hl[H_COOKIE] <= MAX_COOKIE:
            vid_src = _cookie(hv[H_COOKIE], hl[H_COOKIE], self.cookie_name)

        # -- from here on, the click is recorded ------------------------------------------
        cdef bint new = vid_src == NULL
        ms_obj = int(ctx.clock() * 1000)
        cdef long long ms = ms_obj
        click_id = self.uuid7(ms_obj)
        if new:  # the visitor's first click: its id is the visitor's (tracker/hot.py)
            visitor_id = click_id
        else:
            visitor_id = PyUnicode_DecodeASCII(vid_src, 36, NULL)
        # the ids' ASCII text as the str objects hold it (no bytes made of them)
        cdef Py_ssize_t id_len
        cdef const char* cid = PyUnicode_AsUTF8AndSize(click_id, &id_len)
        cdef const char* vid = PyUnicode_AsUTF8AndSize(visitor_id, &id_len)

        cdef _Buffer b = self.buf
        b.size = 0
        # the destination (macros.render)
        cdef Py_ssize_t m
        cdef int macro
        b.put_bytes(<bytes>link.literals[0])
        for m in range(len(link.macros)):
            macro = <int>link.macros[m]
            if macro == M_CLICK:
                b.put(cid, 36)
            elif macro == M_VISITOR:
                b.put(vid, 36)
            elif macro == M_CAMPAIGN:
                b.put_bytes(link.campaign_q)
            elif macro == M_AFFILIATE:
                b.put_bytes(link.affiliate_q)
            else:
                k = macro - M_SUB
                if decoded[k] is not None:
                    b.put_quoted(PyBytes_AS_STRING(decoded[k]), PyBytes_GET_SIZE(decoded[k]))
                elif pv[k] != NULL:
                    b.put_quoted(pv[k], pl[k])
            b.put_bytes(<bytes>link.literals[m + 1])
        if not link.has_click_id:
            _append_click_id(b, cid)
        destination = b.take(0)
        cdef Py_ssize_t dest_len = b.size

        # the row (records.click_row, as orjson writes it)
        cdef Py_ssize_t row_start = b.size
        b.put(b'{"event_time":"', 15)
        _put_event_time(b, ms)
        b.put(b'","click_id":"', 14)
        b.put(cid, 36)
        b.put(b'","visitor_id":"', 16)
        b.put(vid, 36)
        b.put(b'","new_visitor":', 16)
        b.put(b"1" if new else b"0", 1)
        b.put(b",", 1)
        b.put_bytes(link.fields)
        for k in range(13):
            b.put(PARAM_KEY_C[k], PARAM_KEY_LEN[k])
            _put_param(b, pv[k], pl[k], decoded[k])
        b.put(b',"ip":', 6)
        b.put_json(PyBytes_AS_STRING(ip_bytes), PyBytes_GET_SIZE(ip_bytes))
        b.put(b',"user_agent":', 14)
        b.put_json(hv[H_UA], min(hl[H_UA], MAX_HEADER))
        b.put(b',"referer":', 11)
        b.put_json(hv[H_REFERER], min(hl[H_REFERER], MAX_URL))
        b.put(b',"accept_language":', 19)
        b.put_json(hv[H_LANG], min(hl[H_LANG], MAX_HEADER))
        b.put(b',"request_url":', 15)
        b.put_json(url, min(url_len, MAX_URL))
        b.put(b',"destination_url":', 19)
        b.put_json(PyBytes_AS_STRING(destination), min(dest_len, MAX_URL))
        if is_head:
            b.put(b',"method":"HEAD"}', 17)
        else:
            b.put(b',"method":"GET"}', 16)
        row = b.take(row_start)

        # the Redis record in the hot window's compact form (hot.encode of
        # records.click_record): the visitor's 16 bytes, then a JSON array of the text
        # fields without the empty ones at its end, led by how far the id's time is ahead
        # of the click's when it is
        cdef Py_ssize_t record_start = b.size
        b.reserve(16)
        _raw_id(vid, b.data + b.size)
        b.size += 16
        b.put(b"[", 1)
        cdef long long behind = _id_ms(cid) - ms
        cdef bint first = True
        if behind:
            b.put_int(behind)
            first = False
        cdef int last = link.hot_last
        for k in range(5):
            if (decoded[k] is not None and PyBytes_GET_SIZE(decoded[k])) or (
                decoded[k] is None and pl[k]
            ):
                last = 4 + k
        for k in range(last + 1):
            if not first:
                b.put(b",", 1)
            first = False
            if k < 4:
                b.put_bytes(<bytes>link.hot_values[k])
            else:
                _put_param(b, pv[k - 4], pl[k - 4], decoded[k - 4])
        b.put(b"]", 1)
        record = b.take(record_start)

        # the answer (clickpath.encode of the reference's Reply)
        cdef Py_ssize_t answer_start = b.size
        b.put(b"HTTP/1.1 302 Found\r\nLocation: ", 30)
        b.put_bytes(destination)
        b.put(b"\r\nCache-Control: no-store\r\n", 27)
        if new:
            b.put_bytes(self.cookie_prefix)
            b.put(vid, 36)
            b.put_bytes(self.cookie_attrs)
            b.put(b"\r\n", 2)
        b.put(b"Content-Length: 0\r\n", 19)
        b.put_bytes(self._date_line())
        b.put(b"Server: tracker\r\n", 17)
        if not keep_alive:
            b.put(b"Connection: close\r\n", 19)
        b.put(b"\r\n", 2)
        answer = b.take(answer_start)

        ctx.writer.add_click_encoded(click_id, visitor_id, ms_obj, row, record)
        requests = ctx.counters.requests
        cdef PyObject* count = PyDict_GetItem(requests, self.click_key)
        PyDict_SetItem(requests, self.click_key, (<object>count if count != NULL else 0) + 1)
        return answer


cdef inline bint _same_name(const char* have, const char* lower_name, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if lower(<unsigned char>have[i]) != <unsigned char>lower_name[i]:
            return False
    return True


cdef int _param_number(const char* key, Py_ssize_t n) noexcept nogil:
    cdef int k
    for k in range(13):
        if PARAM_LEN[k] == n and memcmp(PARAM_C[k], key, n) == 0:
            return k
    return -1


cdef int _put_param(_Buffer b, const char* src, Py_ssize_t n, object decoded) except -1:
    if decoded is not None:
        return b.put_json(PyBytes_AS_STRING(decoded), PyBytes_GET_SIZE(decoded))
    return b.put_json(src, n if src != NULL else 0)


cdef int _walk(ClickPath path, const char* xff, Py_ssize_t n, uint32_t* ip, const char** src, Py_ssize_t* length):
    """X-Forwarded-For read from the right, skipping trusted hops (client_ip.client_ip)."""
    cdef Py_ssize_t hop_end = n
    cdef Py_ssize_t hop_start
    cdef Py_ssize_t a, l
    cdef uint32_t candidate
    cdef int kind
    while True:
        hop_start = hop_end
        while hop_start > 0 and xff[hop_start - 1] != c',':
            hop_start -= 1
        kind = _hop(xff + hop_start, hop_end - hop_start, &candidate, &a, &l)
        if kind == OTHER:
            return OTHER
        if kind == BAD:
            return IP4  # the walk stops at what it cannot read
        ip[0] = candidate
        src[0] = xff + hop_start + a
        length[0] = l
        if not path._trusted(candidate) or hop_start == 0:
            return IP4
        hop_end = hop_start - 1


cdef const char* _cookie(const char* header, Py_ssize_t n, bytes name):
    """The visitor id in a Cookie header (clicks.read_cookie), or NULL."""
    cdef const char* want = PyBytes_AS_STRING(name)
    cdef Py_ssize_t want_len = PyBytes_GET_SIZE(name)
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t end, a, b, eq
    while i <= n:
        end = i
        while end < n and header[end] != c';':
            end += 1
        a = i
        b = end
        while a < b and header[a] == c' ':
            a += 1
        while b > a and header[b - 1] == c' ':
            b -= 1
        eq = a
        while eq < b and header[eq] != c'=':
            eq += 1
        if eq - a == want_len and memcmp(header + a, want, want_len) == 0:
            a = eq + 1 if eq < b else b
            while a < b and header[a] == c'"':
                a += 1
            while b > a and header[b - 1] == c'"':
                b -= 1
            return header + a if _is_uuid(header + a, b - a) else NULL
        i = end + 1
    return NULL


cdef inline int _hex(char c) noexcept nogil:
    return c - c'0' if c <= c'9' else c - c'a' + 10


cdef void _raw_id(const char* text, char* out) noexcept nogil:
    """hot.raw_id: a canonical (lower-case) UUID string as its 16 bytes."""
    cdef int i = 0
    cdef int o = 0
    while i < 36:
        if text[i] == c'-':
            i += 1
            continue
        out[o] = <char>((_hex(text[i]) << 4) | _hex(text[i + 1]))
        o += 1
        i += 2


cdef long long _id_ms(const char* text) noexcept nogil:
    """ids.uuid7_time_ms: the Unix ms in a UUIDv7 string's first 48 bits."""
    cdef long long value = 0
    cdef int i
    for i in range(13):
        if i != 8:
            value = (value << 4) | _hex(text[i])
    return value


cdef bint _is_uuid(const char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned char c
    if n != 36:
        return False
    for i in range(36):
        c = <unsigned char>s[i]
        if i == 8 or i == 13 or i == 18 or i == 23:
            if c != c'-':
                return False
        elif not ((c >= c'0' and c <= c'9') or (c >= c'a' and c <= c'f')):
            return False
    return True


cdef int _append_click_id(_Buffer b, const char* cid) except -1:
    """macros.append_param(url, "click_id", id) on the destination in the buffer."""
    cdef char* url = b.data
    cdef Py_ssize_t n = b.size
    cdef Py_ssize_t hash_at = 0
    while hash_at < n and url[hash_at] != c'#':
        hash_at += 1
    cdef bint has_query = False
    cdef Py_ssize_t i
    for i in range(hash_at):
        if url[i] == c'?':
            has_query = True
            break
    cdef bytes sep
    if not has_query:
        sep = b"?"
    elif hash_at > 0 and (url[hash_at - 1] == c'?' or url[hash_at - 1] == c'&'):
        sep = b""
    else:
        sep = b"&"
    fragment = PyBytes_FromStringAndSize(url + hash_at, n - hash_at)
    b.size = hash_at
    b.put_bytes(sep)
    b.put(b"click_id=", 9)
    b.put(cid, 36)
    b.put_bytes(fragment)
    return 0


cdef long long _time_second = -1
cdef bytes _time_prefix = b""


cdef int _put_event_time(_Buffer b, long long ms) except -1:
    """timefmt.format_ms into the buffer: the second's text made once a second, then
    the milliseconds."""
    global _time_second, _time_prefix
    cdef long long second = ms // 1000
    cdef int milli = ms % 1000
    if second != _time_second:
        from tracker.timefmt import format_ms

        text = format_ms(second * 1000)
        _time_prefix = text[: len(text) - 3].encode()  # without the milliseconds
        _time_second = second
    b.put_bytes(_time_prefix)
    cdef char tail[3]
    tail[0] = <char>(c'0' + milli // 100)
    tail[1] = <char>(c'0' + milli // 10 % 10)
    tail[2] = <char>(c'0' + milli % 10)
    return b.put(tail, 3)


def head_span(buffer):
    """clickpath.head_span on a bytearray or bytes: (start, end) of the first request head."""
    cdef const char* p
    cdef Py_ssize_t n, start = 0, i
    if type(buffer) is bytearray:
        p = PyByteArray_AS_STRING(buffer)
        n = PyByteArray_GET_SIZE(buffer)
    else:
        p = PyBytes_AS_STRING(buffer)
        n = PyBytes_GET_SIZE(buffer)
    cdef const char* cr
    while start + 1 < n and p[start] == c'\r' and p[start + 1] == c'\n':
        start += 2
    i = start
    while i + 3 < n:
        cr = <const char*>memchr(p + i, c'\r', n - 3 - i)  # libc's: many bytes a step
        if cr == NULL:
            break
        i = cr - p
        if p[i + 1] == c'\n' and p[i + 2] == c'\r' and p[i + 3] == c'\n':
            return start, i
        i += 1
    return start, -1

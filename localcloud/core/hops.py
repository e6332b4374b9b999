"""Headers a proxy must not pass on (RFC 9110 section 7.6.1, RFC 7230 section 6.1): they
describe one connection, not the message. localcloud's fronts (storage, registry) add the
ones their own hop rewrites."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

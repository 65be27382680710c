"""TLS: certificates for HTTPS listeners, chosen by SNI and reloadable, and contexts for https:// upstreams.

A TLS listener hands asyncio one *front* context for its whole life. Its SNI callback picks the
context of the matching certificate from the listener's current ``CertificateSet``; a reload replaces
the set, so new handshakes get the new certificates while established connections keep the session
they negotiated. Every failure to read or match a certificate is a ``ConfigError`` naming the field.

Defaults follow Mozilla's "intermediate" profile: TLS 1.2 and 1.3 only, ECDHE key exchange with AEAD
ciphers for TLS 1.2, no compression or renegotiation, ALPN ``http/1.1`` (the only protocol we speak).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from turnout.core.errors import ConfigError
from turnout.core.model import Certificate, Config, ServerTls, UpstreamTls

__all__ = ["CertificateSet", "Terminator", "TlsMaterial", "UpstreamTlsContext", "build", "check", "client_context"]

_CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])


def _new_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _load_pair(context: ssl.SSLContext, cert: str, key: str, where: str, source: str) -> None:
    """Load a certificate and key, turning OpenSSL's complaints into errors that name the field."""
    for field, path in (("cert", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(source, f"{where}.{field}", f"cannot read {path}: {exc.strerror}") from None
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason:
            raise ConfigError(source, f"{where}.key", f"{key} does not match the certificate {cert}") from None
        if "PEM" in reason or "NO_START_LINE" in reason or "CA_MD_TOO_WEAK" in reason:
            field = "key" if "KEY" in reason or "key" in str(exc) else "cert"
            raise ConfigError(source, f"{where}.{field}", f"not a usable PEM file ({reason})") from None
        raise ConfigError(source, where, f"cannot load certificate and key: {reason}") from None


def certificate_names(path: str) -> tuple[str, ...]:
    """The DNS names a certificate is for (subjectAltName, else its common name)."""
    # The only stdlib reader of a PEM file's fields; part of CPython's ssl module since 3.3.
    decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    names = tuple(value.lower() for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS")
    if names:
        return names
    return tuple(value.lower() for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName")


class CertificateSet:
    """One listener's certificates: the first is the default; SNI names match exactly first, then the
    longest ``*.suffix`` wildcard (one or more labels), as with the service hosts."""

    def __init__(self, default: ssl.SSLContext, exact: dict[str, ssl.SSLContext],
                 wildcard: dict[str, ssl.SSLContext]) -> None:
        self.default = default
        self.exact = exact
        self.wildcard = wildcard

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is not None:
            return found
        dot = name.find(".")
        while dot != -1:
            found = self.wildcard.get(name[dot:])
            if found is not None:
                return found
            dot = name.find(".", dot + 1)
        return self.default


def certificate_set(tls: ServerTls, where: str, source: str) -> CertificateSet:
    contexts = []
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for i, certificate in enumerate(tls.certificates):
        at = f"{where}.certificates[{i}]"
        context = _new_server_context()
        _load_pair(context, certificate.cert, certificate.key, at, source)
        contexts.append(context)
        for name in certificate.names or _names_or_fail(certificate, at, source):
            if name.startswith("*."):
                wildcard.setdefault(name[1:], context)
            else:
                exact.setdefault(name, context)  # the first certificate listed for a name wins
    return CertificateSet(contexts[0], exact, wildcard)


def _names_or_fail(certificate: Certificate, where: str, source: str) -> tuple[str, ...]:
    try:
        return certificate_names(certificate.cert)
    except (ssl.SSLError, OSError, AttributeError):
        raise ConfigError(source, f"{where}.names", "cannot read the names in the certificate; list them") from None


class Terminator:
    """The front context of one TLS listener (see the module docstring)."""

    def __init__(self, certificates: CertificateSet) -> None:
        self.certificates = certificates
        self.context = _new_server_context()
        self.context.sni_callback = self._pick

    def _pick(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.certificates.choose(server_name)


def client_context(tls: UpstreamTls, where: str, source: str) -> ssl.SSLContext:
    """For https:// upstreams: verification on unless turned off, system CAs unless a CA file is given."""
    try:
        context = ssl.create_default_context(cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(source, f"{where}.ca", f"cannot load CA file {tls.ca}: {reason}") from None
    _harden(context)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert is not None and tls.key is not None:
        _load_pair(context, tls.cert, tls.key, where, source)
    return context


@dataclass(frozen=True, slots=True)
class UpstreamTlsContext:
    context: ssl.SSLContext
    server_name: str | None  # None: each endpoint's host


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Everything TLS a worker needs for one config: certificate sets by listener name, client contexts
    by (service, version)."""

    listeners: dict[str, CertificateSet]
    upstreams: dict[tuple[str, str], UpstreamTlsContext]


def build(config: Config) -> TlsMaterial:
    listeners = {
        listener.name: certificate_set(listener.tls, f"listeners[{i}].tls", config.source)
        for i, listener in enumerate(config.listeners)
        if listener.tls is not None
    }
    upstreams = {
        (service.name, version.name): UpstreamTlsContext(
            client_context(version.tls, f"services.{service.name}.versions.{version.name}.tls", config.source),
            version.tls.server_name,
        )
        for service in config.services
        for version in service.versions
        if any(endpoint.tls for endpoint in version.endpoints)
    }
    return TlsMaterial(listeners, upstreams)


def check(config: Config) -> None:
    """Read every certificate, key and CA file the config names, as serving would."""
    build(config)

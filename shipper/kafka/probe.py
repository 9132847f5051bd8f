"""``shipper validate --connect``: reach each broker with the configured security and check
that the topic exists and that we may write to it, without writing anything.

Every bootstrap server, then every leader of the topic's partitions, gets its own connection
(TLS, SASL, version handshake) and one Metadata request that asks for our rights on the topic
and does not create it. One line per broker says ok or why not (a ``security.REASONS`` name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TextIO

from shipper.kafka import compat, security

if TYPE_CHECKING:
    from shipper.config import KafkaConfig, SecurityConfig

__all__ = ["probe"]

TIMEOUT: Final = 10.0  # seconds per broker, for connecting and for the answer


def probe(cfg: KafkaConfig, out: TextIO, timeout: float = TIMEOUT) -> bool:
    """Check the brokers and the topic of ``cfg``, print what was found; True if all is well."""
    out.write(f"kafka: {_summary(cfg.security)}\n")
    replies: dict[str, compat.BrokerReply] = {}
    for address in cfg.bootstrap_servers:
        replies[address] = compat.ask_metadata(cfg, address, cfg.topic, timeout)
        _line(out, f"{address} (bootstrap)", replies[address], cfg.security)
    ok = all(r.error is None for r in replies.values())
    answer = next((r for r in replies.values() if r.error is None), None)
    if answer is None:
        out.write("kafka: FAILED: no bootstrap server could be used\n")
        return False
    ok = _topic(out, cfg.topic, answer) and ok
    by_leader: dict[int, list[int]] = {}
    for partition, leader in sorted(answer.leaders.items()):
        if leader >= 0:
            by_leader.setdefault(leader, []).append(partition)
    for node, partitions in sorted(by_leader.items()):
        what = f"broker {node}, leader of partition{'s' if len(partitions) > 1 else ''} "
        what += ", ".join(map(str, partitions))
        addr = answer.brokers.get(node)
        if addr is None:
            out.write(f"  {what}: FAILED: not among the brokers the cluster lists\n")
            ok = False
            continue
        if addr not in replies:
            replies[addr] = compat.ask_metadata(cfg, addr, cfg.topic, timeout)
        _line(out, f"{addr} ({what})", replies[addr], cfg.security)
        ok = ok and replies[addr].error is None
    out.write("kafka: ok\n" if ok else "kafka: FAILED\n")
    return ok


def _summary(sec: SecurityConfig) -> str:
    parts = [f"protocol {sec.protocol}"]
    if sec.uses_sasl and sec.sasl is not None:
        parts.append(f"SASL {sec.sasl.mechanism} as {sec.sasl.username}")
    if sec.uses_tls:
        t = sec.tls
        parts.append(f"CA {t.ca_file or 'system store'}")
        if t.cert_file:
            parts.append(f"client certificate {t.cert_file}")
        parts.append("host names verified" if t.verify_hostname else "host names NOT verified")
    return ", ".join(parts)


def _line(out: TextIO, what: str, reply: compat.BrokerReply, sec: SecurityConfig) -> None:
    if reply.error is None:
        out.write(f"  {what}: ok{f' ({reply.tls})' if reply.tls else ''}\n")
        return
    why = security.reason(reply.error)
    text = security.REASONS[why]
    if why == "connection_closed" and reply.ready and not sec.uses_sasl:
        text += " after the handshake: does this listener need SASL (protocol sasl_ssl or "
        text += "sasl_plaintext)?"
    out.write(f"  {what}: FAILED {why}: {text}\n")
    out.write(f"    ({_detail(reply.error)})\n")


def _topic(out: TextIO, topic: str, reply: compat.BrokerReply) -> bool:
    error = reply.topic_error
    if error is not None:
        why = security.reason(error)
        if why == "not_authorized":
            out.write(f"  topic {topic}: FAILED not_authorized: we may not see it (ACLs)\n")
        elif isinstance(error, compat.kerr.UnknownTopicOrPartitionError):
            out.write(
                f"  topic {topic}: FAILED: does not exist (a broker with "
                "auto.create.topics.enable creates it on first use; validate does not)\n"
            )
        else:
            out.write(f"  topic {topic}: FAILED: {_detail(error)}\n")
        return False
    n = len(reply.leaders)
    leaderless = sorted(p for p, leader in reply.leaders.items() if leader < 0)
    text = f"  topic {topic}: {n} partition{'s' if n != 1 else ''}"
    ok = not leaderless
    if leaderless:
        text += f"; FAILED: no leader for partition(s) {', '.join(map(str, leaderless))}"
    if reply.may_write is None:
        text += "; write permission not checked (the broker is older than Kafka 2.3)"
    elif reply.may_write:
        text += "; write allowed"
    else:
        text += "; FAILED not_authorized: the broker's ACLs do not allow us to write to it"
        ok = False
    out.write(text + "\n")
    return ok


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."

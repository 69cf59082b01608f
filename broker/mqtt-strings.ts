/**
 * MQTT strings (client ids, topics, filters) must be well-formed UTF-8 without
 * U+0000, or the connection is closed [MQTT-1.5.3-1], [MQTT-1.5.3-2].
 *
 * mqtt-packet decodes them with `buffer.toString('utf8')`, which turns every
 * invalid byte sequence (and every encoded surrogate) into U+FFFD before any hook
 * sees it: the bytes are gone, so U+FFFD itself is taken as the mark of a
 * malformed string. A client that really meant U+FFFD is refused too; no topic of
 * CONTRACT §4 has one.
 */
// eslint-disable-next-line no-control-regex
const MALFORMED = /[\u0000\uFFFD]/

export function isMalformedMqttString (value: string): boolean {
  return MALFORMED.test(value)
}

/** MQTT topic filters, for both ends (the agent's link and inputs, the hub's external-broker bus). */
/** MQTT topic filter matching (`+` one level, `#` the rest; wildcards skip `$` topics). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  const sys = topic.startsWith('$');
  for (let i = 0; i < f.length; i++) {
    const part = f[i];
    if (part === '#') return !(i === 0 && sys);
    if (i >= t.length) return false;
    if (part === '+') {
      if (i === 0 && sys) return false;
      continue;
    }
    if (part !== t[i]) return false;
  }
  return f.length === t.length;
}

// Plain-language numbers: times, money, losses, "2h ago".

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} sec`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} sec`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function shortDuration(seconds) {
  if (seconds == null) return "–";
  const s = Math.round(seconds);
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`;
}

export function money(usd) {
  if (usd == null) return "–";
  return usd > 0 && usd < 0.01 ? "<$0.01" : `$${usd.toFixed(2)}`;
}

export function loss(value, digits = 3) {
  return value == null ? "–" : Number(value).toFixed(digits);
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "–";
  const s = Math.max(0, (now - new Date(iso).getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  if (s < 604800) return `${Math.floor(s / 86400)}d ago`;
  return `${Math.floor(s / 604800)}w ago`;
}

export function dateTime(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString(undefined, { hour12: false }) : "";
}

export function stars(n) {
  const k = Math.max(0, Math.min(5, Math.round(n || 0)));
  return "★".repeat(k) + "☆".repeat(5 - k);
}

// "Loss decreased 45% (3.37 → 1.85)", or increased.
export function lossChange(before, after) {
  if (before == null || after == null || before <= 0) return null;
  const pct = ((before - after) / before) * 100;
  const verb = pct >= 0 ? "decreased" : "increased";
  const size = Math.abs(pct);
  // Small changes keep a decimal: "0.4%" says more than "0%".
  const shown = size >= 10 ? Math.round(size) : size.toFixed(1);
  return `Loss ${verb} ${shown}% (${before.toFixed(2)} → ${after.toFixed(2)})`;
}

// A short time in milliseconds: "240 ms", "1.4 s".
export function millis(ms) {
  if (ms == null) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
}

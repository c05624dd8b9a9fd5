// Splits a duration into days/hours/minutes/seconds for the countdown.
export function remaining(targetMs, nowMs = Date.now()) {
  let left = Math.max(0, Math.floor((targetMs - nowMs) / 1000));
  const days = Math.floor(left / 86400);
  left -= days * 86400;
  const hours = Math.floor(left / 3600);
  left -= hours * 3600;
  const minutes = Math.floor(left / 60);
  return { days, hours, minutes, seconds: left - minutes * 60 };
}

// A minimal event emitter: interactive components expose one so pages can listen.
export function createEmitter() {
  const listeners = new Map();
  return {
    on(type, fn) {
      if (!listeners.has(type)) listeners.set(type, new Set());
      listeners.get(type).add(fn);
      return () => listeners.get(type).delete(fn);
    },
    emit(type, detail) {
      for (const fn of listeners.get(type) ?? []) fn(detail);
    },
    count(type) {
      return listeners.get(type)?.size ?? 0;
    },
  };
}

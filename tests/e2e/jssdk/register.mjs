// Registers loader.mjs (resolve/load hooks for wukongimjssdk@1.0.4).
// Usage: node --import ./register.mjs scenario.mjs '<json>'
// (sdk.mjs also calls this lazily, so --import is optional.)
import { register } from 'node:module';

const FLAG = Symbol.for('raftchat.e2e.jssdk.hooksRegistered');

if (!globalThis[FLAG]) {
  register('./loader.mjs', import.meta.url);
  globalThis[FLAG] = true;
}

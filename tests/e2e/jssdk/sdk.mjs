// Loads independent instances of the unmodified wukongimjssdk@1.0.4.
//
//   import { loadSdkInstance } from './sdk.mjs';
//   const a = await loadSdkInstance('a');   // own module graph (?inst=a)
//   const b = await loadSdkInstance('b');   // own module graph (?inst=b)
//   a.sdk !== b.sdk                          // WKSDK.shared() per instance
//
// The SDK is built from per-module singletons (WKSDK.shared(),
// ConnectManager.shared(), ChatManager.shared(), SecurityManager.shared(), ...),
// so two users in one process need two copies of every SDK module.  loader.mjs
// carries the "?inst=<name>" query through all of the SDK's relative imports,
// which makes Node instantiate a separate graph per name.
//
// The SDK calls `new WebSocket(addr)` on the global; Node 20 has no global
// WebSocket, so the pinned npm `ws` package is installed as globalThis.WebSocket.

import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import WS from 'ws';

const require = createRequire(import.meta.url);
const HOOKS_FLAG = Symbol.for('raftchat.e2e.jssdk.hooksRegistered');

export const SDK_VERSION = require('wukongimjssdk/package.json').version;

/** Directory URL of the SDK's lib/ (ends with "/"). */
export function sdkLibUrl() {
  const pkgJson = require.resolve('wukongimjssdk/package.json');
  return pathToFileURL(path.join(path.dirname(pkgJson), 'lib') + path.sep).href;
}

/** Register loader.mjs once (no-op when started with --import ./register.mjs). */
export async function ensureHooks() {
  if (!globalThis[HOOKS_FLAG]) {
    await import('./register.mjs');
  }
}

/** Make the SDK's `new WebSocket(url)` use the `ws` package. */
export function ensureWebSocket() {
  if (globalThis.WebSocket !== WS) {
    globalThis.WebSocket = WS;
  }
}

const INSTANCE_RE = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Import one isolated copy of the SDK.
 * Returns the instance's WKSDK singleton plus the classes/enums a test needs,
 * all taken from that instance's own module graph (the SDK uses instanceof
 * internally, so never mix objects from different instances).
 */
export async function loadSdkInstance(name) {
  if (!INSTANCE_RE.test(name)) {
    throw new Error(`invalid SDK instance name ${JSON.stringify(name)}`);
  }
  await ensureHooks();
  ensureWebSocket();
  const base = sdkLibUrl();
  const q = `?inst=${name}`;
  const imp = (file) => import(new URL(file + q, base).href);
  // index.js first: it pulls in the whole graph (there are import cycles
  // index <-> managers; importing the entry first keeps evaluation order the
  // same as in a bundled browser build).
  const index = await imp('index.js');
  const [model, connectManager, proto, constants, chatManager] = await Promise.all([
    imp('model.js'), imp('connect_manager.js'), imp('proto.js'), imp('const.js'), imp('chat_manager.js'),
  ]);
  const WKSDK = index.default;
  return {
    name,
    WKSDK,
    sdk: WKSDK.shared(),
    Channel: model.Channel,
    MessageText: model.MessageText,
    Message: model.Message,
    ChannelTypePerson: model.ChannelTypePerson, // 1
    ChannelTypeGroup: model.ChannelTypeGroup, // 2
    ConnectStatus: connectManager.ConnectStatus,
    ConnectManager: connectManager.ConnectManager,
    ChatManager: chatManager.ChatManager,
    PacketType: proto.PacketType,
    Setting: proto.Setting,
    MessageContentType: constants.MessageContentType,
    modules: { index, model, connectManager, proto, constants, chatManager },
  };
}

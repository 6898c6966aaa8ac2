// Module customization hooks (node:module register API, Node >= 20.6) that let
// Node load the UNMODIFIED npm package wukongimjssdk@1.0.4.
//
// Why this is needed: the SDK's lib/*.js are ES modules (import/export, ES5
// bodies emitted by TypeScript) with extension-less relative imports
// (`from "./model"`, `from "."`), and the package.json has no
// "type": "module".  Node would therefore treat lib/*.js as CommonJS (syntax
// error on `import`) and would not resolve "./model" anyway.
//
// What the hooks do, only for files under .../node_modules/wukongimjssdk/lib/:
//   * resolve: relative specifiers get ".js" appended ("." / "./" -> index.js)
//     and the importing module's query string (e.g. "?inst=a") is copied onto
//     the child URL.  Node caches modules by full URL, so every distinct query
//     string yields a completely separate module graph, i.e. separate
//     WKSDK / ConnectManager / ChatManager / SecurityManager ... singletons.
//   * load: the file is read from disk (query stripped) and handed to Node as
//     format "module" (ESM).
// Bare imports made by the SDK (bignumber.js, crypto-js, curve25519-js,
// md5-typescript, buffer) are left to Node's default resolution; they are
// stateless helpers and are shared between instances.  ("buffer" resolves to
// Node's built-in module, which provides the same Buffer API the SDK uses.)
//
// Do not import this file directly; register it with register.mjs
// (`node --import ./register.mjs ...`) or via ensureHooks() in sdk.mjs.

import { readFile } from 'node:fs/promises';

const SDK_LIB_MARKER = '/node_modules/wukongimjssdk/lib/';

function isSdkLibUrl(u) {
  return u.protocol === 'file:' && u.pathname.includes(SDK_LIB_MARKER);
}

function isRelative(specifier) {
  return specifier === '.' || specifier === '..' ||
    specifier.startsWith('./') || specifier.startsWith('../');
}

// Normalise a file: URL inside the SDK lib dir to the real .js file.
function withJsExtension(u) {
  if (u.pathname.endsWith('/')) {
    u.pathname += 'index.js';
  } else if (!u.pathname.endsWith('.js')) {
    u.pathname += '.js';
  }
  return u;
}

export async function resolve(specifier, context, nextResolve) {
  const parent = context.parentURL ? new URL(context.parentURL) : null;

  // 1. Relative import made by an SDK module: add .js, carry the instance query.
  if (parent && isSdkLibUrl(parent) && isRelative(specifier)) {
    let target = new URL(specifier === '.' || specifier === '..' ? specifier + '/' : specifier, parent);
    target = withJsExtension(target);
    target.search = parent.search; // per-instance module graph
    target.hash = '';
    return { url: target.href, format: 'module', shortCircuit: true };
  }

  // 2. A file: URL pointing into the SDK lib dir (how sdk.mjs imports an
  //    instance's entry modules, e.g. file:///.../lib/index.js?inst=a).
  if (specifier.startsWith('file:')) {
    const target = new URL(specifier);
    if (isSdkLibUrl(target)) {
      withJsExtension(target);
      return { url: target.href, format: 'module', shortCircuit: true };
    }
  }

  // 3. Everything else (bare packages, node: builtins, our own files).
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  const u = new URL(url);
  if (isSdkLibUrl(u)) {
    u.search = '';
    u.hash = '';
    const source = await readFile(u);
    return { format: 'module', source, shortCircuit: true };
  }
  return nextLoad(url, context);
}

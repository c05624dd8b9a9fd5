/*
 * bundler loader for module pages: the modules a page needs as one ES module.
 *
 *   import { load } from "https://bundles.example.com/loader.mjs";
 *   const result = await load(["components/hero", "components/card"], { version: "1.1.0" });
 *   result.modules["components/hero"].render({ title: "Hi" });
 *   result.mode;  // "tailored" or "fallback"
 *   result.bytes; // bytes transferred for the bundle (when the browser reports it)
 *   result.url;   // the /bundle.mjs URL it imported
 *
 * The options are loader.js's (version, base, css); the bundle is /bundle.mjs, imported
 * with import(): it registers nothing globally (the fallback, served while the tailored
 * module is cold, does). The URL building is loader.js's, imported here, so both forms
 * ask for the same canonical URLs.
 */
import "./loader.js";

const loader = globalThis.BundlerLoader;
const defaultBase = import.meta.url.replace(/\/loader\.mjs(\?.*)?$/, "");

export function url(modules, options = {}) {
  return loader.url(modules, { base: defaultBase, ...options, format: "esm" });
}

export async function load(modules, options = {}) {
  const names = loader.canonical(modules);
  const href = url(names, options);
  const stylesheet = options.css === "link"
    ? loader.stylesheet(url(names, { ...options, stylesheet: true }))
    : Promise.resolve();
  const [bundle] = await Promise.all([import(href), stylesheet]);
  const missing = names.filter((name) => !(name in bundle));
  if (missing.length) throw new Error("bundle did not export: " + missing.join(", "));
  const modulesByName = {};
  for (const name of names) modulesByName[name] = bundle[name];
  const info = bundle["bundler:bundle"] || { mode: "unknown" };
  return { modules: modulesByName, mode: info.mode, bytes: loader.bytes(href), url: href };
}

export default { load, url };

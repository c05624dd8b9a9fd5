/*
 * bundler loader: one script tag for exactly the modules a page needs.
 *
 *   BundlerLoader.load(["components/hero", "components/card"], { version: "1.1.0" })
 *     .then(function (result) {
 *       result.modules["components/hero"].render({ title: "Hi" });
 *       result.mode;  // "tailored" or "fallback"
 *       result.bytes; // bytes transferred for the bundle (when the browser reports it)
 *     });
 *
 * Options: version (omit for the service's default version), base (the service's URL,
 * default: where this loader was served from), registry (default "__bundlerModules"),
 * css ("inject", the default: the bundle adds its modules' CSS to the page; "link": the
 * loader links /bundle.css with the same query instead, and waits for it too).
 * The URL is canonical (sorted, deduplicated names), so every page asking for the same
 * modules shares one CDN entry. Works with the tailored bundle and with the fallback,
 * and next to an AMD loader such as RequireJS (the bundle also define()s each module).
 * No dependencies, no build step; it never calls define() itself. Module pages use
 * loader.mjs (the same options; the module form, through import()).
 */
(function (global) {
  "use strict";

  var BUNDLES = Symbol.for("bundler.bundles");
  var script = document.currentScript;
  var defaultBase = script && script.src ? script.src.replace(/\/loader\.js(\?.*)?$/, "") : "";

  function canonical(modules) {
    var seen = {};
    var names = [];
    modules.forEach(function (name) {
      name = String(name).trim();
      if (name && !seen[name]) {
        seen[name] = true;
        names.push(name);
      }
    });
    return names.sort();
  }

  function bundleUrl(modules, options) {
    options = options || {};
    var base = options.base !== undefined ? options.base : defaultBase;
    var path = options.format === "esm" ? "/bundle.mjs?" : "/bundle.js?";
    var encode = function (s) {
      return encodeURIComponent(s).replace(/%2F/g, "/").replace(/%40/g, "@");
    };
    var query = "modules=" + canonical(modules).map(encode).join(",");
    if (options.version) query += "&v=" + encode(options.version);
    if (options.stylesheet) return base + "/bundle.css?" + query;
    return base + path + query + (options.css === "link" ? "&css=link" : "");
  }

  function linkStylesheet(href) {
    return new Promise(function (resolve, reject) {
      var found = document.querySelector('link[rel="stylesheet"][href="' + href + '"]');
      if (found) {
        resolve();
        return;
      }
      var link = document.createElement("link");
      link.rel = "stylesheet";
      link.href = href;
      link.onload = function () { resolve(); };
      link.onerror = function () { reject(new Error("could not load " + href)); };
      document.head.appendChild(link);
    });
  }

  function transferred(url) {
    var entries = global.performance && performance.getEntriesByName
      ? performance.getEntriesByName(url)
      : [];
    var entry = entries[entries.length - 1];
    return entry ? entry.encodedBodySize || entry.transferSize || 0 : 0;
  }

  function load(modules, options) {
    options = options || {};
    var names = canonical(modules);
    var url = bundleUrl(names, options);
    var registryName = options.registry || "__bundlerModules";
    var stylesheet = options.css === "link"
      ? linkStylesheet(bundleUrl(names, Object.assign({}, options, { stylesheet: true })))
      : Promise.resolve();
    var script = new Promise(function (resolve, reject) {
      var tag = document.createElement("script");
      tag.src = url;
      tag.async = true;
      tag.onload = function () {
        var registry = global[registryName] || {};
        var missing = names.filter(function (name) {
          return !(name in registry);
        });
        if (missing.length) {
          reject(new Error("bundle did not register: " + missing.join(", ")));
          return;
        }
        var result = { modules: {}, url: url, bytes: transferred(url), mode: "unknown" };
        names.forEach(function (name) {
          result.modules[name] = registry[name];
        });
        var bundles = registry[BUNDLES] || [];
        if (bundles.length) result.mode = bundles[bundles.length - 1].mode;
        resolve(result);
      };
      tag.onerror = function () {
        reject(new Error("could not load " + url));
      };
      document.head.appendChild(tag);
    });
    return Promise.all([script, stylesheet]).then(function (both) {
      return both[0];
    });
  }

  // canonical, stylesheet and bytes are for loader.mjs, the module form's loader.
  global.BundlerLoader = {
    load: load,
    url: bundleUrl,
    canonical: canonical,
    stylesheet: linkStylesheet,
    bytes: transferred,
  };
})(window);

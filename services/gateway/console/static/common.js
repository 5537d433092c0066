// Shared by every console page: the token (sessionStorage), the API client, safe DOM building.
// Agent-supplied text is only ever set with textContent / setAttribute; nothing is parsed as HTML.
"use strict";

const TOKEN_KEY = "agentmesh.console.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.assign("/login");
}

// The token's scopes, read from its payload for display only (the gateway enforces them).
export function scopes() {
  const parts = token().split(".");
  if (parts.length !== 3) return new Set();
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json);
    const raw = claims.scope || claims.scp || "";
    return new Set(Array.isArray(raw) ? raw : String(raw).split(/\s+/).filter(Boolean));
  } catch (e) {
    return new Set();
  }
}

export function subject() {
  try {
    return JSON.parse(atob(token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub || "";
  } catch (e) {
    return "";
  }
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function toLogin(refused) {
  const next = location.pathname + location.search;
  if (refused) sessionStorage.removeItem(TOKEN_KEY);
  location.assign("/login?next=" + encodeURIComponent(next) + (refused ? "&refused=1" : ""));
}

// fetch with the bearer token; 401 sends the operator to the login page.
export async function api(path, options = {}) {
  if (!token()) {
    toLogin();
    throw new ApiError(401, "no token");
  }
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + token() });
  const response = await fetch("/api" + path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 401) {
    toLogin(true);
    throw new ApiError(401, "the token was refused");
  }
  return response;
}

export async function apiJson(path, options = {}) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error || response.statusText);
  return body;
}

// el("div", {class: "x", "data-id": id}, "text", child, ...): strings become text nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function json(value) {
  return el("pre", { class: "json" }, JSON.stringify(value === undefined ? null : value, null, 2));
}

// "SERVING_STATE_DRAINING" -> "DRAINING"
export function enumName(value, prefix) {
  if (!value) return "UNSPECIFIED";
  return String(value).startsWith(prefix) ? String(value).slice(prefix.length) : String(value);
}

export function when(timestamp) {
  if (!timestamp) return "";
  const date = new Date(timestamp);
  return isNaN(date) ? String(timestamp) : date.toISOString().replace("T", " ").replace("Z", " UTC");
}

export function notice(kind, text) {
  return el("p", { class: "notice " + kind, role: kind === "error" ? "alert" : "status" }, text);
}

// What a failed call means to the operator (403: the token lacks the scope; the data is not shown).
export function explainError(error, scope) {
  if (error.status === 403) return notice("denied", `Your token does not allow this (scope ${scope} needed).`);
  if (error.status === 429) return notice("error", "Rate limited by the gateway; try again shortly.");
  return notice("error", `Error ${error.status || ""}: ${error.message}`);
}

// The header every page shares: navigation by scope, who is signed in, sign out.
export function header(active) {
  const nav = document.getElementById("nav");
  if (!nav) return;
  const granted = scopes();
  const links = [
    ["/", "Marketplace", "agents:read"],
    ["/tasks", "Tasks", "tasks:read"],
  ];
  clear(nav);
  for (const [href, label, scope] of links) {
    if (!granted.has(scope)) continue;
    nav.append(el("a", { href, class: active === href ? "active" : "" }, label));
  }
  if (token()) {
    const out = el("button", { type: "button", id: "sign-out" }, "Sign out");
    out.addEventListener("click", signOut);
    nav.append(el("span", { class: "who" }, subject()), out);
  }
}

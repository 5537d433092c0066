import { setToken } from "./common.js";

// Where to go after signing in: only a page of this console (an absolute, protocol-relative or
// backslash-tricked URL resolves to another origin and is ignored).
function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  try {
    const url = new URL(next, location.origin);
    if (url.origin === location.origin) return url.pathname + url.search;
  } catch (e) {
    // not a URL: fall through
  }
  return "/";
}

if (new URLSearchParams(location.search).get("refused")) document.getElementById("refused").hidden = false;

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value);
  location.assign(nextPage());
});

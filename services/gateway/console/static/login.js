import { setToken } from "./common.js";

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value);
  const next = new URLSearchParams(location.search).get("next") || "/";
  // Only a path on this console: never an absolute or protocol-relative URL.
  location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
});

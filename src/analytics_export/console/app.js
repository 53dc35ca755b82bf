// The console's entry point: sign-in, the hash router and the header navigation.

import { alertsPage } from "./alerts.js";
import { api, session } from "./api.js";
import { exportsPage, newExportPage } from "./exports.js";
import { runsPage, scheduleFormPage, schedulesPage } from "./schedules.js";
import { newStreamPage, streamsPage } from "./streams.js";
import { alertBox, announce, field, h, showErrors } from "./ui.js";

const ROUTES = [
  [/^#\/exports$/, exportsPage, "Exports"],
  [/^#\/exports\/new$/, newExportPage, "New export"],
  [/^#\/schedules$/, schedulesPage, "Schedules"],
  [/^#\/schedules\/new$/, scheduleFormPage, "New schedule"],
  [/^#\/schedules\/([\w-]+)\/edit$/, scheduleFormPage, "Edit schedule"],
  [/^#\/schedules\/([\w-]+)\/runs$/, runsPage, "Run history"],
  [/^#\/streams$/, streamsPage, "Streams"],
  [/^#\/streams\/new$/, newStreamPage, "New stream"],
  [/^#\/alerts$/, alertsPage, "Alerts"],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOut = document.getElementById("sign-out");
let stop = null;

/** Renders the page the hash names (or the sign-in form), stopping the previous page's polling. */
function route(message) {
  stop?.();
  stop = null;
  main.replaceChildren();
  nav.hidden = signOut.hidden = !session.key;
  if (!session.key) return signInPage(message);
  const hash = location.hash || "#/exports";
  for (const [pattern, page, title] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    document.title = `${title} · analytics-export`;
    for (const link of nav.querySelectorAll("a")) {
      if (link.getAttribute("href") === hash) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    stop = page(main, ...match.slice(1)) ?? null;
    main.querySelector("h1")?.focus();
    return;
  }
  location.replace("#/exports");
}

function signInPage(message) {
  document.title = "Sign in · analytics-export";
  const key = h("input", { type: "password", required: true, autocomplete: "off", spellcheck: "false" });
  const alert = alertBox();
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h("form", { class: "card signin stack", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    const value = key.value.trim();
    if (!showErrors(form, value ? [] : [[key, "Enter your API key"]], alert)) return;
    button.disabled = true;
    try {
      await api("/api/exports?limit=1", { key: value });
      session.signIn(value);
      route();
      announce("Signed in");
    } catch (err) {
      alert.show(err.status === 401 ? `This API key was not accepted (${err.message}).` : err.message);
      key.focus();
    } finally {
      button.disabled = false;
    }
  } },
  h("h1", {}, "Sign in"),
  field("API key", key, "Create one with `analytics-export keys create`. It is kept in this browser tab only."),
  alert, button);
  main.append(form);
  alert.show(message);
  key.focus();
}

signOut.addEventListener("click", () => {
  session.signOut();
  route();
  announce("Signed out");
});
window.addEventListener("unauthorized", () => {
  session.signOut();
  route("Your API key is no longer accepted; sign in again.");
});
window.addEventListener("hashchange", () => route());
route();

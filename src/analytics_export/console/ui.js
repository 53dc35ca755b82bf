// Small DOM and formatting helpers shared by the pages.

const PROPS = new Set(["value", "checked", "textContent"]);
let uid = 0;

/** An element: `on*` props become listeners, `value`/`checked` properties, the rest attributes. */
export function h(tag, props = {}, ...children) {
  return fill(document.createElement(tag), props, children);
}

/** An SVG element (attributes only). */
export function s(tag, props = {}, ...children) {
  return fill(document.createElementNS("http://www.w3.org/2000/svg", tag), props, children);
}

function fill(el, props, children) {
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const newId = (prefix) => `${prefix}-${++uid}`;

/** A labelled control with an optional hint, wired with for/id and aria-describedby. */
export function field(label, control, hint) {
  control.id ||= newId("f");
  const wrap = h("div", { class: "field" }, h("label", { for: control.id }, label), control);
  if (hint) {
    const small = h("small", { id: newId("hint") }, hint);
    describe(control, small.id);
    wrap.append(small);
  }
  return wrap;
}

/** Adds `id` to the elements describing `control`. */
export function describe(control, id) {
  control.setAttribute("aria-describedby", `${control.getAttribute("aria-describedby") ?? ""} ${id}`.trim());
}

export function options(values, selected) {
  return values.map(([value, label]) => h("option", { value, selected: value === selected }, label ?? value));
}

let toastTimer;

/** Says `message` through the page's aria-live status region, shown for a few seconds. */
export function announce(message) {
  const status = document.getElementById("status");
  status.textContent = "";
  clearTimeout(toastTimer);
  requestAnimationFrame(() => { status.textContent = message; });
  toastTimer = setTimeout(() => { status.textContent = ""; }, 6000);
}

/** A role=alert box that shows a message, or hides when given none. */
export function alertBox() {
  const box = h("div", { class: "alert", role: "alert", hidden: true });
  box.show = (message) => {
    box.textContent = message ?? "";
    box.hidden = !message;
  };
  return box;
}

export function debounce(fn, ms = 250) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

const number = new Intl.NumberFormat();
export const fmtNumber = (n) => number.format(n ?? 0);

export function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  for (n ??= 0; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function fmtDuration(seconds) {
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

const dateFormat = { dateStyle: "medium", timeStyle: "short" };
export const fmtDate = (iso) => (iso ? new Date(iso).toLocaleString(undefined, dateFormat) : "—");

/** A datetime-local input's value for a Date, in the browser's time zone. */
export function localInput(date) {
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 16);
}

/** A datetime-local value as an ISO instant (UTC), or null when empty. */
export const isoFromLocal = (value) => (value ? new Date(value).toISOString() : null);

/** What is wrong with a [start, end) pair of datetime-local inputs, as [control, message] pairs. */
export function rangeErrors(start, end) {
  if (!start.value || !end.value) {
    return [start, end].filter((input) => !input.value).map((input) => [input, "Choose a date and time"]);
  }
  return new Date(end.value) > new Date(start.value) ? [] : [[end, "The end must be after the start"]];
}

/** A table (cards at phone width) with a visually hidden caption and column headers, around `tbody`. */
export function table(caption, headers, tbody) {
  return h("table", { class: "cards" }, h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))), tbody);
}

export function badge(status) {
  return h("span", { class: `badge badge-${status}` }, status);
}

/** Marks each [control, message] invalid next to its field, sums them up in `alert`, focuses the first. */
export function showErrors(form, errors, alert) {
  form.querySelectorAll(".field-error").forEach((e) => e.remove());
  for (const control of form.querySelectorAll("[aria-invalid]")) {
    control.removeAttribute("aria-invalid");
    const kept = control.getAttribute("aria-describedby").split(" ").filter((id) => !id.startsWith("err-"));
    control.setAttribute("aria-describedby", kept.join(" "));
  }
  for (const [control, message] of errors) {
    const note = h("small", { class: "field-error", id: newId("err") }, message);
    control.setAttribute("aria-invalid", "true");
    describe(control, note.id);
    control.after(note);
  }
  alert.show(errors.length ? errors.map(([, m]) => m).join(". ") : null);
  errors[0]?.[0].focus();
  return !errors.length;
}

/** Calls `load` now and again after the delay (ms) it resolves to; `now()` reloads at once, `stop()` ends it. */
export function poll(load) {
  let timer;
  let stopped = false;
  const now = async () => {
    clearTimeout(timer);
    const delay = await load();
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(now, delay);
  };
  now();
  return {
    now,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

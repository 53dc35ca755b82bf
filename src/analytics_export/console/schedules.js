// Schedules: the list (pause/resume, backfill), the create/edit form with its cron preview, run history.

import { api, query } from "./api.js";
import { exportFields, modelLabel } from "./fields.js";
import {
  alertBox, announce, badge, debounce, describe, field, fmtBytes, fmtDate, fmtNumber, h, isoFromLocal, localInput,
  newId, options, poll, rangeErrors, s, showErrors, table,
} from "./ui.js";

const RANGES = [["last_hour", "Last hour"], ["last_day", "Last day"], ["last_week", "Last week"],
  ["last_month", "Last month"], ["since_last_run", "Since the last run"]];
const TIME_FIELDS = [["inserted_at", "Stored time (late events go to the next window)"],
  ["timestamp", "Event time (events later than the delay are missed)"]];
const FIXED = ["timezone", "date_range", "time_field"]; // PATCH refuses changes to these
const DAY = 86400000;
const RUN_DATE = { weekday: "short", day: "numeric", month: "short", year: "numeric", hour: "2-digit",
  minute: "2-digit", timeZoneName: "short" };

export function schedulesPage(main) {
  const alert = alertBox();
  const tbody = h("tbody");
  const backfill = backfillDialog();
  main.append(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Schedules"),
      h("a", { class: "button", href: "#/schedules/new" }, "New schedule")),
    alert,
    table("Schedules", ["Name", "Runs", "Status", "Next run", "Exported until", "Actions"], tbody),
    backfill.dialog);

  const load = async () => {
    try {
      const { items } = await api("/api/schedules?limit=200");
      tbody.replaceChildren(...items.map((view) => scheduleRow(view, toggle, backfill.open)));
      if (!items.length) tbody.append(h("tr", {}, h("td", { colspan: "6" }, "No schedules yet.")));
    } catch (err) {
      alert.show(err.message);
    }
  };
  const toggle = async (view, button) => {
    const { id, name } = view.schedule;
    const verb = view.status === "active" ? "pause" : "resume";
    try {
      await api(`/api/schedules/${id}/${verb}`, { method: "POST" });
      announce(`${name} ${verb === "pause" ? "paused" : "resumed"}`);
      await load();
      tbody.querySelector(`[data-toggle="${id}"]`)?.focus();
    } catch (err) {
      alert.show(err.message);
      button.disabled = false;
    }
  };
  load();
}

function scheduleRow(view, toggle, backfill) {
  const { schedule: spec, status } = view;
  const active = status === "active";
  const toggleButton = h("button", { type: "button", class: "secondary", "data-toggle": spec.id,
    onclick: (e) => { e.target.disabled = true; toggle(view, e.target); } }, active ? "Pause" : "Resume");
  return h("tr", {},
    h("td", { "data-label": "Name" }, spec.name, modelLabel(spec)),
    h("td", { "data-label": "Runs" }, h("code", {}, spec.schedule),
      ` (${spec.timezone}) · ${spec.date_range.replace(/_/g, " ")}`),
    h("td", { "data-label": "Status" }, badge(status),
      view.paused_reason ? h("div", { class: "muted small" }, view.paused_reason) : null),
    h("td", { "data-label": "Next run" }, fmtDate(spec.next_run)),
    h("td", { "data-label": "Exported until" }, fmtDate(view.exported_until)),
    h("td", { "data-label": "Actions" }, h("div", { class: "actions" },
      h("a", { class: "button secondary", href: `#/schedules/${spec.id}/edit`, "aria-label": `Edit ${spec.name}` },
        "Edit"),
      h("a", { class: "button secondary", href: `#/schedules/${spec.id}/runs`,
        "aria-label": `Run history of ${spec.name}` }, "Runs"),
      toggleButton,
      h("button", { type: "button", class: "secondary", onclick: () => backfill(spec) }, "Backfill…"))));
}

function backfillDialog() {
  const titleId = newId("backfill-title");
  const title = h("h2", { id: titleId }, "Backfill");
  const start = h("input", { type: "datetime-local", required: true });
  const end = h("input", { type: "datetime-local", required: true });
  const force = h("input", { type: "checkbox" });
  const alert = alertBox();
  let schedule = null;
  const form = h("form", { class: "stack", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    if (!showErrors(form, rangeErrors(start, end), alert)) return;
    try {
      const body = { start: isoFromLocal(start.value), end: isoFromLocal(end.value), force: force.checked };
      const done = await api(`/api/schedules/${schedule.id}/backfill`, { method: "POST", body });
      dialog.close();
      announce(`Backfill of ${schedule.name}: ${done.queued} windows queued, ${done.skipped} skipped`);
    } catch (err) {
      alert.show(err.message);
    }
  } },
  title,
  h("p", { class: "muted" }, "Exports every window of the schedule in this range that has not been exported yet."),
  h("div", { class: "row" }, field("From", start), field("To", end)),
  h("label", { class: "check" }, force, "Export again windows that completed already (replaces their files)"),
  alert,
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Start backfill"),
    h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel")));
  const dialog = h("dialog", { "aria-labelledby": titleId }, form);
  return {
    dialog,
    open(spec) {
      schedule = spec;
      title.textContent = `Backfill “${spec.name}”`;
      const to = new Date();
      to.setMinutes(0, 0, 0);
      start.value = localInput(new Date(to.getTime() - 7 * DAY));
      end.value = localInput(to);
      force.checked = false;
      showErrors(form, [], alert);
      dialog.showModal();
      start.focus();
    },
  };
}

export function scheduleFormPage(main, id) {
  const name = h("input", { type: "text", required: true, maxlength: "200" });
  const cron = h("input", { type: "text", required: true, maxlength: "200", value: "0 2 * * *", spellcheck: "false",
    class: "mono" });
  const zones = h("datalist", { id: newId("zones") },
    Intl.supportedValuesOf("timeZone").map((zone) => h("option", { value: zone })));
  const timezone = h("input", { type: "text", required: true, value: "UTC", list: zones.id, autocomplete: "off" });
  const dateRange = h("select", {}, options(RANGES, "last_day"));
  const timeField = h("select", {}, options(TIME_FIELDS, "inserted_at"));
  const delay = h("input", { type: "number", min: "0", step: "1", value: "60" });
  const fields = exportFields(() => ({ start: new Date(Date.now() - 30 * DAY).toISOString(),
    end: new Date().toISOString() })); // properties seen in the last 30 days
  const nextRuns = cronPreview(cron, timezone);
  const alert = alertBox();
  const submit = h("button", { type: "submit" }, id ? "Save changes" : "Create schedule");

  const body = () => ({ name: name.value.trim(), schedule: cron.value.trim(), timezone: timezone.value.trim(),
    date_range: dateRange.value, time_field: timeField.value, delay_seconds: Number(delay.value),
    ...fields.body(Boolean(id)) });
  const validate = () => {
    const errors = [];
    if (!name.value.trim()) errors.push([name, "Give the schedule a name"]);
    if (!cron.value.trim()) errors.push([cron, "Enter a cron expression, e.g. 0 2 * * *"]);
    if (!validZone(timezone.value.trim())) errors.push([timezone, "Use an IANA time zone, e.g. Europe/Berlin or UTC"]);
    if (delay.value === "" || Number(delay.value) < 0) errors.push([delay, "The delay is 0 or more seconds"]);
    return showErrors(form, [...errors, ...fields.validate()], alert);
  };
  const form = h("form", { class: "stack", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    if (!validate()) return;
    submit.disabled = true;
    try {
      const sent = body();
      if (id) FIXED.forEach((k) => delete sent[k]);
      const view = await api(id ? `/api/schedules/${id}` : "/api/schedules",
        { method: id ? "PATCH" : "POST", body: sent });
      announce(`Schedule ${view.schedule.name} saved`);
      location.hash = "#/schedules";
    } catch (err) {
      alert.show(err.message);
    } finally {
      submit.disabled = false;
    }
  } },
  h("fieldset", {}, h("legend", {}, "When"),
    field("Name", name),
    h("div", { class: "row" },
      field("Cron expression", cron, "minute hour day-of-month month weekday, e.g. 0 2 * * * (02:00 every day)"),
      field("Time zone", timezone), zones),
    nextRuns.element,
    h("div", { class: "row" },
      field("Each run exports", dateRange, id ? "Fixed once the schedule exists" : null),
      field("Windows select on", timeField, id ? "Fixed once the schedule exists" : null),
      field("Delay after a window ends (seconds)", delay))),
  fields.element, alert,
  h("div", { class: "actions" }, submit, h("a", { class: "button secondary", href: "#/schedules" }, "Cancel")));
  main.append(h("h1", { tabindex: "-1" }, id ? "Edit schedule" : "New schedule"), form);
  fields.refresh();
  if (id) {
    [timezone, dateRange, timeField].forEach((control) => { control.disabled = true; });
    api(`/api/schedules/${id}`).then(({ schedule: spec }) => {
      name.value = spec.name;
      cron.value = spec.schedule;
      timezone.value = spec.timezone;
      dateRange.value = spec.date_range;
      timeField.value = spec.time_field;
      delay.value = spec.delay_seconds;
      fields.load(spec);
      nextRuns.update();
    }, (err) => alert.show(err.message));
  } else {
    nextRuns.update();
  }
}

function validZone(zone) {
  try {
    new Intl.DateTimeFormat(undefined, { timeZone: zone });
    return Boolean(zone);
  } catch {
    return false;
  }
}

/** The next 5 runs of the cron in its time zone, from the server, refreshed as the user types. */
function cronPreview(cron, timezone) {
  const element = h("div", { class: "cron-preview", id: newId("cron-preview"), "aria-live": "polite" });
  describe(cron, element.id);
  let latest = 0;
  const update = debounce(async () => {
    const ticket = ++latest;
    const zone = validZone(timezone.value.trim()) ? timezone.value.trim() : "UTC";
    try {
      const data = await api(query("/api/schedules/next-runs", { cron: cron.value.trim(), timezone: zone, count: 5 }));
      if (ticket !== latest) return;
      element.replaceChildren(h("p", {}, h("strong", {}, data.description)),
        h("ol", { "aria-label": "Next 5 runs" }, data.runs.map((run) => h("li", {},
          h("time", { datetime: run }, new Date(run).toLocaleString(undefined, { ...RUN_DATE, timeZone: zone }))))));
    } catch (err) {
      if (ticket === latest) element.replaceChildren(h("p", { class: "error-text" }, err.message));
    }
  }, 300);
  cron.addEventListener("input", update);
  timezone.addEventListener("change", update);
  return { element, update };
}

export function runsPage(main, id) {
  const alert = alertBox();
  const heading = h("h1", { tabindex: "-1" }, "Run history");
  const chart = h("figure", { class: "chart" });
  const tbody = h("tbody");
  main.append(heading, h("p", {}, h("a", { href: "#/schedules" }, "← All schedules")), alert, chart,
    table("Runs, newest window first", ["Window", "Status", "Events", "Size", "Export"], tbody));
  api(`/api/schedules/${id}`).then(({ schedule }) => { heading.textContent = `Run history: ${schedule.name}`; },
    (err) => alert.show(err.message));
  const poller = poll(async () => {
    try {
      const runs = await api(`/api/schedules/${id}/runs?limit=100`);
      chart.replaceChildren(runChart(runs),
        h("figcaption", { class: "muted" }, "Events per run, oldest window on the left"));
      tbody.replaceChildren(...runs.map(runRow));
      if (!runs.length) tbody.append(h("tr", {}, h("td", { colspan: "5" }, "No runs yet.")));
      return runs.some((r) => ["planned", "pending", "processing"].includes(r.status)) ? 2000 : 15000;
    } catch (err) {
      alert.show(err.message);
      return 15000;
    }
  });
  return poller.stop;
}

function runRow(run) {
  return h("tr", {},
    h("td", { "data-label": "Window" }, `${fmtDate(run.window_start)} – ${fmtDate(run.window_end)}`),
    h("td", { "data-label": "Status" }, badge(run.status),
      run.error ? h("pre", { class: "error-text" }, run.error) : null),
    h("td", { "data-label": "Events" }, fmtNumber(run.events)),
    h("td", { "data-label": "Size" }, fmtBytes(run.bytes)),
    h("td", { "data-label": "Export", class: "mono" }, run.export_id.slice(0, 8)));
}

/** An inline SVG bar chart of events per run; each bar has a title with its window and count. */
function runChart(runs) {
  const [width, height, base] = [600, 120, 135]; // bars grow up from y = base, at most `height` tall
  const ordered = [...runs].reverse();
  const most = Math.max(1, ...ordered.map((r) => r.events ?? 0));
  const step = width / Math.max(ordered.length, 1);
  const bar = (run, i) => {
    const tall = Math.max(1, ((run.events ?? 0) / most) * height);
    return s("rect", { x: (i * step + step * 0.1).toFixed(1), width: (step * 0.8).toFixed(1),
      y: (base - tall).toFixed(1), height: tall.toFixed(1), class: `bar bar-${run.status}` },
    s("title", {}, `${fmtDate(run.window_start)}: ${fmtNumber(run.events)} events (${run.status})`));
  };
  return s("svg", { viewBox: `0 0 ${width} ${base + 1}`, role: "img",
    "aria-label": `Events per run for ${runs.length} runs; the most in one run: ${fmtNumber(most)}` },
  s("text", { x: "0", y: "10", class: "axis" }, fmtNumber(most)),
  s("line", { x1: "0", x2: String(width), y1: String(base), y2: String(base), class: "axis-line" }),
  ordered.map(bar));
}

// The exports list (live progress, download, copy link, cancel, retry, delete) and the new export form.

import { api } from "./api.js";
import { exportFields, modelDetail, modelLabel } from "./fields.js";
import {
  alertBox, announce, badge, field, fmtBytes, fmtDate, fmtDuration, fmtNumber, h, isoFromLocal, localInput, newId,
  poll, rangeErrors, showErrors, table,
} from "./ui.js";

const ACTIVE = ["pending", "processing"];
const FINISHED = ["completed", "failed", "expired"]; // what Delete removes (a cancelled export ends failed)

export function exportsPage(main) {
  const alert = alertBox();
  const tbody = h("tbody");
  const summary = h("p", { class: "muted" });
  const rows = new Map();
  const removed = (id) => {
    const known = rows.get(id);
    if (known) {
      const next = known.tr.nextElementSibling ?? known.tr.previousElementSibling;
      known.tr.remove();
      rows.delete(id);
      (next?.querySelector("a, button") ?? main.querySelector("h1")).focus();
    }
    poller.now();
  };
  const deletion = deleteDialog(removed);
  main.append(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Exports"),
      h("a", { class: "button", href: "#/exports/new" }, "New export")),
    alert, summary,
    table("Exports, newest first", ["Created", "Export", "Status", "Progress", "Actions"], tbody),
    deletion.dialog);

  const refresh = async () => {
    try {
      const data = await api("/api/exports?limit=50");
      alert.show(null);
      render(data);
      return data.items.some((item) => ACTIVE.includes(item.status)) ? 1000 : 10000;
    } catch (err) {
      alert.show(err.message);
      return 5000;
    }
  };
  const render = ({ items, total }) => {
    const shown = total > items.length ? `, the newest ${items.length} shown` : "";
    summary.textContent = total ? `${fmtNumber(total)} export${total === 1 ? "" : "s"}${shown}.` : "No exports yet.";
    for (const item of items) {
      const id = item.id;
      const known = rows.get(id);
      if (known?.status === item.status) {
        progressCell(known.progress, item);
        continue;
      }
      if (known) announce(`Export ${id.slice(0, 8)} is ${item.status}`);
      const progress = h("td", { "data-label": "Progress" });
      progressCell(progress, item);
      const tr = exportRow(item, progress, actions(item, alert, () => poller.now(), deletion.open));
      const focused = known?.tr.contains(document.activeElement);
      known?.tr.replaceWith(tr);
      if (focused) tr.querySelector("a, button")?.focus();
      rows.set(id, { status: item.status, tr, progress });
    }
    const ids = new Set(items.map((item) => item.id));
    for (const id of rows.keys()) if (!ids.has(id)) rows.delete(id); // deleted, or off the first page
    const order = items.map((item) => rows.get(item.id).tr);
    const moved = order.some((tr, i) => tbody.children[i] !== tr) || tbody.children.length !== order.length;
    if (moved) tbody.replaceChildren(...order); // only then: moving a row would take the focus off its buttons
  };
  const poller = poll(refresh);
  return poller.stop;
}

function exportRow(item, progress, actionsCell) {
  const { result } = item;
  const range = `${fmtDate(item.start_date)} – ${fmtDate(item.end_date)}`;
  const rows = item.events.length ? item.events.join(", ") : "all events";
  const what = `${item.model === "events" ? rows : modelDetail(item)} · ${item.format}`
    + `${item.compression ? ` + ${item.compression}` : ""} → ${item.destination.type}`;
  return h("tr", { "data-id": item.id },
    h("td", { "data-label": "Created" }, fmtDate(item.created_at)),
    h("td", { "data-label": "Export" }, h("span", { class: "mono" }, item.id.slice(0, 8)), modelLabel(item), h("br"),
      what, h("br"),
      h("span", { class: "muted" }, range)),
    h("td", { "data-label": "Status" }, badge(item.status),
      result?.error ? h("pre", { class: "error-text" }, result.error) : null),
    progress, actionsCell);
}

/** The share of an export done, from the events it expects (an upper bound on some stores, so a running
 * export stays under 100%) or its partitions; null when unknown. */
function share({ status, progress }) {
  if (status === "completed") return 1;
  if (progress.expected_events) return Math.min(0.99, progress.events / progress.expected_events);
  return progress.partitions ? progress.partitions_done / progress.partitions : null;
}

/** Bar and numbers: events, bytes, rate and the time left at that rate. */
function progressCell(td, item) {
  const { status, progress, result, id } = item;
  const done = status === "completed";
  const events = done ? result.total_events : progress.events;
  const bytes = done ? result.file_size : progress.bytes;
  const fraction = share(item);
  const bar = h("progress", { max: "1", "aria-label": `Progress of export ${id.slice(0, 8)}` });
  if (status !== "processing" || fraction !== null) bar.value = fraction ?? 0; // else indeterminate
  const parts = [`${fmtNumber(events)} ${item.model === "events" ? "events" : item.model}`, fmtBytes(bytes)];
  if (fraction !== null) parts.unshift(`${Math.round(fraction * 100)}%`);
  if (status === "processing" && progress.started_at) {
    const elapsed = Math.max(0.1, (Date.now() - Date.parse(progress.started_at)) / 1000);
    parts.push(`${fmtNumber(Math.round(events / elapsed))} events/s`);
    if (fraction) parts.push(`about ${fmtDuration((elapsed * (1 - fraction)) / fraction)} left`);
  }
  if (status === "pending") parts.push("waiting for a worker");
  td.replaceChildren(bar, h("div", { class: "muted small" }, parts.join(" · ")));
}

function actions(item, alert, reload, confirmDelete) {
  const id = item.id;
  const short = id.slice(0, 8);
  const act = (label, method, path, said) => h("button", {
    type: "button", class: "secondary", "aria-label": `${label} export ${short}`,
    onclick: async (e) => {
      e.target.disabled = true;
      try {
        await api(path, { method });
        announce(said);
        reload();
      } catch (err) {
        alert.show(err.message);
        e.target.disabled = false;
      }
    },
  }, label);
  const url = item.result?.download_url;
  return h("td", { "data-label": "Actions" }, h("div", { class: "actions" },
    url ? h("a", { class: "button", href: url, download: "", "aria-label": `Download export ${short}` },
      "Download") : null,
    url ? h("button", { type: "button", class: "secondary", "aria-label": `Copy download link of export ${short}`,
      onclick: () => copy(new URL(url, location.origin).href) }, "Copy link") : null,
    ACTIVE.includes(item.status) ? act("Cancel", "POST", `/api/exports/${id}/cancel`, `Cancelling export ${short}`) : null,
    item.status === "failed" ? act("Retry", "POST", `/api/exports/${id}/retry`, `Export ${short} queued again`)
      : null,
    FINISHED.includes(item.status) ? h("button", { type: "button", class: "secondary",
      "aria-label": `Delete export ${short}`, onclick: () => confirmDelete(item) }, "Delete…") : null));
}

/** The modal asking before a finished export is deleted (with its file, if it was a download);
 * `open(item)` shows it, `removed(id)` is called once the API deleted it. */
function deleteDialog(removed) {
  const titleId = newId("delete-title");
  const noteId = newId("delete-note");
  const title = h("h2", { id: titleId }, "Delete export");
  const note = h("p", { id: noteId });
  const alert = alertBox();
  const confirm = h("button", { type: "submit", class: "danger" }, "Delete");
  const keep = h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Keep it");
  let target = null;
  const form = h("form", { class: "stack", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    const id = target.id;
    confirm.disabled = true;
    try {
      await api(`/api/exports/${id}`, { method: "DELETE" });
      dialog.close();
      announce(`Export ${id.slice(0, 8)} deleted`);
      removed(id);
    } catch (err) {
      if (err.status !== 404) return alert.show(err.message);
      dialog.close(); // deleted meanwhile (another tab): gone all the same
      removed(id);
    } finally {
      confirm.disabled = false;
    }
  } }, title, note, alert, h("div", { class: "actions" }, confirm, keep));
  const dialog = h("dialog", { "aria-labelledby": titleId, "aria-describedby": noteId }, form);
  return {
    dialog,
    open(item) {
      target = item;
      const short = item.id.slice(0, 8);
      const { type } = item.destination;
      title.textContent = `Delete export ${short}?`;
      note.textContent = `The ${item.status} export ${short} is removed from the list`
        + (type === "download" ? ", with its file: its download link stops working."
          : `; what it sent to the ${type} destination stays there.`) + " This cannot be undone.";
      alert.show(null);
      dialog.showModal();
      keep.focus(); // the safe choice first
    },
  };
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return announce("Download link copied");
  } catch {
    const back = document.activeElement;
    const area = h("textarea", { class: "offscreen", readonly: true, value: text });
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    back?.focus();
    announce(copied ? "Download link copied" : `Copy this link: ${text}`);
  }
}

export function newExportPage(main) {
  const start = h("input", { type: "datetime-local", required: true });
  const end = h("input", { type: "datetime-local", required: true });
  const fields = exportFields(() => ({ start: isoFromLocal(start.value), end: isoFromLocal(end.value) }));
  const alert = alertBox();
  const preview = h("section", { class: "preview" });
  const submit = h("button", { type: "submit" }, "Create export");

  const setRange = (back) => {
    const to = new Date();
    to.setSeconds(60, 0);
    const from = new Date(to);
    back(from);
    start.value = localInput(from);
    end.value = localInput(to);
    fields.refresh();
  };
  const lastDay = (d) => d.setDate(d.getDate() - 1);
  const preset = (label, back) => h("button", { type: "button", class: "secondary", onclick: () => {
    setRange(back);
    announce(`Range set to the ${label.toLowerCase()}`);
  } }, label);
  const validate = () => showErrors(form, [...rangeErrors(start, end), ...fields.validate()], alert);
  const body = () => ({ start_date: isoFromLocal(start.value), end_date: isoFromLocal(end.value), ...fields.body() });
  const send = async (button, work) => {
    if (!validate()) return;
    button.disabled = true;
    try {
      await work();
    } catch (err) {
      alert.show(err.message);
    } finally {
      button.disabled = false;
    }
  };
  const previewButton = h("button", { type: "button", class: "secondary", onclick: (e) => showPreview(e) },
    "Preview");
  fields.model.addEventListener("change", () => { // the preview lists events only
    previewButton.hidden = fields.model.value !== "events";
    preview.replaceChildren();
  });
  const showPreview = (e) => send(e.target, async () => {
    preview.replaceChildren(h("p", {}, "Loading preview…"));
    try {
      const table = previewTable(await api("/api/exports/preview", { method: "POST", body: body() }));
      preview.replaceChildren(table);
      announce(table.getAttribute("aria-label"));
    } catch (err) {
      preview.replaceChildren();
      throw err;
    }
  });
  const form = h("form", { novalidate: true, class: "stack", onsubmit: (e) => {
    e.preventDefault();
    send(submit, async () => {
      const view = await api("/api/exports", { method: "POST", body: body() });
      announce(`Export ${view.id.slice(0, 8)} created`);
      location.hash = "#/exports";
    });
  } },
  h("fieldset", {}, h("legend", {}, "Date range"),
    h("div", { class: "row" }, field("Start (inclusive)", start), field("End (exclusive)", end)),
    h("div", { class: "presets", role: "group", "aria-label": "Range presets" },
      preset("Last day", lastDay), preset("Last week", (d) => d.setDate(d.getDate() - 7)),
      preset("Last month", (d) => d.setMonth(d.getMonth() - 1)))),
  fields.element, alert,
  h("div", { class: "actions" }, submit, previewButton));
  start.addEventListener("change", fields.refresh);
  end.addEventListener("change", fields.refresh);
  setRange(lastDay);
  main.append(h("h1", { tabindex: "-1" }, "New export"), form, preview);
}

function previewTable({ columns, rows, truncated }) {
  const text = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : String(v ?? ""));
  const caption = rows.length ? `Preview: the first ${rows.length} rows${truncated ? " (more match)" : ""}`
    : "Preview: no events match";
  return h("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption },
    h("table", { class: "preview-table" }, h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", {}, text(row[c]))))))));
}

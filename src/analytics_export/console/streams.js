// Streams: the list (delivered, lag, pause/resume, delete) and the form that starts one, with the destination's
// Test button.

import { api } from "./api.js";
import { destinationPicker } from "./fields.js";
import { alertBox, announce, badge, field, fmtDate, fmtNumber, h, options, poll, showErrors, table } from "./ui.js";

const FORMATS = [["json_lines", "JSON Lines"], ["json", "JSON"], ["csv", "CSV"], ["parquet", "Parquet"],
  ["avro", "Avro"]];
const MESSAGES = [["event", "A message per event (JSON)"], ["batch", "A message per batch (the format's body)"]];

export function streamsPage(main) {
  const alert = alertBox();
  const tbody = h("tbody");
  main.append(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Streams"),
      h("a", { class: "button", href: "#/streams/new" }, "New stream")),
    alert,
    table("Streams", ["Name", "Destination", "Status", "Delivered", "Last delivered", "Actions"], tbody));

  const act = async (view, verb, button) => {
    const { id, name } = view.stream;
    if (verb === "delete" && !confirm(`Delete the stream ${name}? It stops delivering; nothing is undone.`)) return;
    button.disabled = true;
    try {
      await api(verb === "delete" ? `/api/streams/${id}` : `/api/streams/${id}/${verb}`,
        { method: verb === "delete" ? "DELETE" : "POST" });
      announce(`${name} ${{ pause: "paused", resume: "resumed", delete: "deleted" }[verb]}`);
      poller.now();
    } catch (err) {
      alert.show(err.message);
      button.disabled = false;
    }
  };
  const load = async () => {
    try {
      const { items } = await api("/api/streams?limit=200");
      tbody.replaceChildren(...items.map((view) => streamRow(view, act)));
      if (!items.length) tbody.append(h("tr", {}, h("td", { colspan: "6" }, "No streams yet.")));
    } catch (err) {
      alert.show(err.message);
    }
    return 5000;
  };
  const poller = poll(load);
  return () => poller.stop();
}

function streamRow(view, act) {
  const { stream: spec, status } = view;
  const button = (verb, label) => h("button", { type: "button", class: "secondary",
    "aria-label": `${label} ${spec.name}`, onclick: (e) => act(view, verb, e.target) }, label);
  return h("tr", { "data-id": spec.id },
    h("td", { "data-label": "Name" }, spec.name),
    h("td", { "data-label": "Destination" }, spec.destination.type),
    h("td", { "data-label": "Status" }, badge(status),
      view.last_error ? h("div", { class: "muted small error-text" }, view.last_error) : null),
    h("td", { "data-label": "Delivered" }, `${fmtNumber(view.delivered_events)} events`,
      h("div", { class: "muted small" }, `${fmtNumber(view.delivered_batches)} batches`)),
    h("td", { "data-label": "Last delivered" }, fmtDate(view.last_delivered_at)),
    h("td", { "data-label": "Actions" }, h("div", { class: "actions" },
      status === "paused" ? button("resume", "Resume") : button("pause", "Pause"), button("delete", "Delete"))));
}

export function newStreamPage(main) {
  const alert = alertBox();
  const name = h("input", { type: "text", required: true, maxlength: "200", autocomplete: "off" });
  const events = h("input", { type: "text", autocomplete: "off", placeholder: "signup, $pageview" });
  const format = h("select", {}, options(FORMATS, "json_lines"));
  const message = h("select", {}, options(MESSAGES, "event"));
  const maxEvents = h("input", { type: "number", min: "1", max: "100000", value: "1000" });
  const maxSeconds = h("input", { type: "number", min: "0.05", max: "3600", step: "0.05", value: "1" });
  const destination = destinationPicker("streams");
  const submit = h("button", { type: "submit" }, "Create stream");
  const body = () => ({
    name: name.value.trim(), events: events.value.split(",").map((e) => e.trim()).filter(Boolean),
    format: format.value, message: message.value, max_batch_events: Number(maxEvents.value),
    max_batch_seconds: Number(maxSeconds.value), destination: destination.value(),
  });
  const form = h("form", { novalidate: true, class: "stack", onsubmit: async (e) => {
    e.preventDefault();
    const errors = [...(name.value.trim() ? [] : [[name, "A stream needs a name"]]), ...destination.validate()];
    if (!showErrors(form, errors, alert)) return;
    submit.disabled = true;
    try {
      const view = await api("/api/streams", { method: "POST", body: body() });
      announce(`Stream ${view.stream.name} created`);
      location.hash = "#/streams";
    } catch (err) {
      alert.show(err.message);
    } finally {
      submit.disabled = false;
    }
  } },
  h("fieldset", {}, h("legend", {}, "Stream"), field("Name", name),
    field("Events", events, "Event names, comma-separated. None: every event. Delivers events stored from now on.")),
  h("fieldset", {}, h("legend", {}, "Batches"), h("div", { class: "row" },
    field("Format", format, "Webhook bodies and object-storage files; a table takes typed columns"),
    field("Broker messages", message),
    field("Events per batch (at most)", maxEvents), field("Seconds per batch (at most)", maxSeconds))),
  destination.element, alert, h("div", { class: "actions" }, submit));
  main.append(h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "New stream")), form);
}

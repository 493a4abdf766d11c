// The playground: plain JavaScript against the server's own OpenAI-compatible API, nothing from the internet.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], history: [], chatAbort: null, compareAbort: null };

function settings() {
  const number = (id, fallback) => { const v = parseFloat($(id).value); return Number.isFinite(v) ? v : fallback; };
  const max_tokens = Math.max(1, Math.round(number("max-tokens", 256)));
  return { max_tokens, min_tokens: Math.min(max_tokens, Math.max(0, Math.round(number("min-tokens", 0)))),
           temperature: number("temperature", 0), top_p: number("top-p", 1) };
}

function withSystem(messages) {
  const system = $("system").value.trim();
  return system ? [{ role: "system", content: system }, ...messages] : messages;
}

// POST /v1/chat/completions with stream: true; calls onText for each piece. Resolves to {finish_reason, usage}.
async function streamChat(model, messages, onText, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, signal,
    body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true }, ...settings() }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || `${response.status} ${response.statusText}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const result = { finish_reason: null, usage: null };
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return result;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return result;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) result.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) onText(choice.delta.content);
        if (choice.finish_reason) result.finish_reason = choice.finish_reason;
      }
    }
  }
}

function describe(result) {
  const usage = result.usage ? `, ${result.usage.completion_tokens} tokens` : "";
  return `finish_reason: ${result.finish_reason}${usage}`;
}

// One answer into one box: streaming, then done (or stopped / error), with its finish reason below.
async function answerInto(box, meta, model, messages, signal) {
  box.textContent = "";
  box.dataset.state = "streaming";
  box.dataset.pieces = "0";  // how many streamed pieces were shown: the page's own record that it streamed
  meta.textContent = "";
  let text = "";
  // A fast model streams hundreds of pieces a second: draw them at most every 40 ms, appending to one
  // text node, so the page stays responsive (Stop answers at once) however long the answer grows.
  const node = box.appendChild(document.createTextNode(""));
  let pending = "", timer = 0;
  const draw = () => {
    timer = 0;
    const scroller = box.closest("#chat-log");
    const following = scroller && scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    node.appendData(pending);
    pending = "";
    if (following) scroller.scrollTop = scroller.scrollHeight;  // keep the newest words in view unless the user scrolled up
  };
  const show = (piece) => {
    text += piece;
    pending += piece;
    box.dataset.pieces = String(+box.dataset.pieces + 1);
    if (!timer) timer = setTimeout(draw, 40);
  };
  try {
    const result = await streamChat(model, messages, show, signal);
    clearTimeout(timer);
    draw();
    if (!text.trim()) box.innerHTML = "<em>(empty answer: the model ended its turn at once)</em>";
    box.dataset.state = "done";
    meta.textContent = describe(result);
  } catch (error) {
    clearTimeout(timer);
    draw();
    box.dataset.state = signal.aborted ? "stopped" : "error";
    meta.textContent = signal.aborted ? "stopped" : `error: ${error.message}`;
  }
  return text;
}

// --- models -------------------------------------------------------------------------------------
async function loadModels() {
  const [models, config] = await Promise.all([getJson("/v1/models"), getJson("/playground/config")]);
  state.models = models.data;
  const select = $("model");
  select.innerHTML = "";
  for (const model of state.models) {
    const option = new Option(model.phi3e2e_kind === "base" ? `${model.id} (base, int4)` : model.id, model.id);
    select.add(option);
  }
  select.value = config.default_model;
  await modelChanged();
}

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

function selected() { return state.models.find((m) => m.id === $("model").value); }

async function modelChanged() {
  const model = selected();
  $("tuned-name").textContent = model ? model.id : "";
  $("base-name").textContent = model && model.phi3e2e_base ? model.phi3e2e_base : "(none)";
  $("compare-send").disabled = !(model && model.phi3e2e_base);
  const examples = $("compare-examples");
  examples.length = 1;
  state.examples = [];
  if (model && model.phi3e2e_kind !== "base") {
    state.examples = (await getJson(`/playground/examples?model=${encodeURIComponent(model.id)}`)).examples;
    state.examples.forEach((example, i) => examples.add(new Option(example.question, String(i))));
  }
  $("status").textContent = model && !model.phi3e2e_base
    ? "This model has no base to compare with: pick a fine-tuned run for the side-by-side view." : "";
}

// --- chat ---------------------------------------------------------------------------------------
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  if (role === "assistant") {
    const meta = document.createElement("p");
    meta.className = "meta";
    div.append(meta);
  }
  $("chat-log").append(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

async function sendChat(event) {
  event.preventDefault();
  const question = $("chat-input").value.trim();
  if (!question || state.chatAbort) return;
  $("chat-input").value = "";
  bubble("user", question);
  state.history.push({ role: "user", content: question });
  const reply = bubble("assistant", "");
  state.chatAbort = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  const text = await answerInto(reply.querySelector(".text"), reply.querySelector(".meta"), $("model").value,
                                withSystem(state.history), state.chatAbort.signal);
  reply.dataset.state = reply.querySelector(".text").dataset.state;
  state.history.push({ role: "assistant", content: text });
  state.chatAbort = null;
  $("chat-send").disabled = false;
  $("chat-stop").disabled = true;
}

// --- compare ------------------------------------------------------------------------------------
async function sendCompare(event) {
  event.preventDefault();
  const model = selected();
  const question = $("compare-question").value.trim();
  if (!question || !model || !model.phi3e2e_base || state.compareAbort) return;
  state.compareAbort = new AbortController();
  $("compare-send").disabled = true;
  $("compare-stop").disabled = false;
  const slow = setTimeout(() => {  // the first answer of a base model waits for its int4 build
    if (!$("answer-base").textContent) {
      $("status").textContent = "Building or loading the base model (its first use: seconds for a tiny model, minutes for Phi-3-mini) ...";
    }
  }, 2000);
  const messages = withSystem([{ role: "user", content: question }]);
  const signal = state.compareAbort.signal;
  await Promise.all([
    answerInto($("answer-base"), $("meta-base"), model.phi3e2e_base, messages, signal),
    answerInto($("answer-tuned"), $("meta-tuned"), model.id, messages, signal),
  ]);
  clearTimeout(slow);
  $("status").textContent = "";
  state.compareAbort = null;
  $("compare-send").disabled = false;
  $("compare-stop").disabled = true;
}

function exampleChosen() {
  const example = state.examples[parseInt($("compare-examples").value, 10)];
  $("reference-box").hidden = !example;
  if (!example) return;
  $("compare-question").value = example.question;
  $("reference").textContent = example.reference;
}

function showView(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  }
  $("view-chat").hidden = name !== "chat";
  $("view-compare").hidden = name !== "compare";
}

document.addEventListener("DOMContentLoaded", () => {
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) sendChat(event);
  });
  $("chat-stop").addEventListener("click", () => state.chatAbort && state.chatAbort.abort());
  $("chat-clear").addEventListener("click", () => { state.history = []; $("chat-log").innerHTML = ""; });
  $("compare-form").addEventListener("submit", sendCompare);
  $("compare-stop").addEventListener("click", () => state.compareAbort && state.compareAbort.abort());
  $("compare-examples").addEventListener("change", exampleChosen);
  $("model").addEventListener("change", () => { state.history = []; $("chat-log").innerHTML = ""; modelChanged(); });
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  loadModels().catch((error) => { $("status").textContent = `error: ${error.message}`; });
});

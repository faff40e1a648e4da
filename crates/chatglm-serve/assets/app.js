// The chat page of `chatglm serve`: streams answers from /v1/chat/completions (SSE) and renders
// them as markdown. No dependencies, nothing loaded from the network besides this server.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"), clear: $("clear"),
  model: $("model"), status: $("status"), form: $("composer"),
  maxLength: $("max-length"), topP: $("top-p"), temperature: $("temperature"),
};

/** Past [query, answer] pairs of this page's conversation. */
let history = [];
let controller = null;

// ---------- markdown (escape first, then a small subset: fences, inline code, emphasis, lists) ----------

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

function emphasis(html) {
  return html
    .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*\w])\*([^*\s][^*\n]*)\*(?!\w)/g, "$1<em>$2</em>")
    .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g,
      '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
}

function inline(text) {
  return text.split(/(`[^`\n]+`)/).map((part, i) =>
    i % 2 ? "<code>" + escapeHtml(part.slice(1, -1)) + "</code>" : emphasis(escapeHtml(part))
  ).join("");
}

/** Renders markdown to HTML; every piece of input text is escaped. An unclosed fence (while
 *  streaming) is shown as code up to the end. */
function renderMarkdown(src) {
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let para = [];
  let list = null;
  const flushPara = () => {
    if (para.length) out.push("<p>" + para.map(inline).join("<br>") + "</p>");
    para = [];
  };
  const flushList = () => {
    if (list) out.push(`<${list.type}>` + list.items.map((t) => "<li>" + inline(t) + "</li>").join("") + `</${list.type}>`);
    list = null;
  };
  const item = (type, text) => {
    flushPara();
    if (!list || list.type !== type) { flushList(); list = { type, items: [] }; }
    list.items.push(text);
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+#.-]*)\s*$/);
    if (fence) {
      flushPara(); flushList();
      const code = [];
      for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) code.push(lines[i]);
      const lang = fence[1] ? escapeHtml(fence[1]) : "";
      out.push((lang ? `<pre data-lang="${lang}"><code class="language-${lang}">` : "<pre><code>") +
        escapeHtml(code.join("\n")) + "</code></pre>");
      continue;
    }
    let m;
    if (!line.trim()) { flushPara(); flushList(); }
    else if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
      flushPara(); flushList();
      out.push(`<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`);
    } else if ((m = line.match(/^\s*[-*+]\s+(.*)$/))) item("ul", m[1]);
    else if ((m = line.match(/^\s*\d+[.)]\s+(.*)$/))) item("ol", m[1]);
    else { flushList(); para.push(line); }
  }
  flushPara(); flushList();
  return out.join("");
}

// ---------- page ----------

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (role === "user") div.textContent = text;
  else div.innerHTML = renderMarkdown(text);
  els.messages.appendChild(div);
  els.messages.scrollTop = els.messages.scrollHeight;
  return div;
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.disabled = !busy;
  els.clear.disabled = busy;
}

function bindSlider(input, digits) {
  const out = $(input.id + "-value");
  const show = () => { out.textContent = Number(input.value).toFixed(digits); };
  input.addEventListener("input", show);
  show();
}

async function loadModels() {
  try {
    const resp = await fetch("/v1/models");
    if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
    const { data } = await resp.json();
    els.model.innerHTML = "";
    for (const m of data) {
      const opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = m.parent ? `${m.id} (prefix of ${m.parent})` : m.id;
      els.model.appendChild(opt);
    }
    const saved = localStorage.getItem("chatglm.model");
    if (saved && data.some((m) => m.id === saved)) els.model.value = saved;
  } catch (err) {
    els.status.textContent = "Could not list models: " + err.message;
  }
}

/** Reads the SSE body, calling onChunk with each parsed JSON chunk. */
async function readEvents(resp, onChunk) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

async function send() {
  const query = els.prompt.value;
  if (!query.trim() || controller) return;
  els.prompt.value = "";
  const messages = [];
  for (const [q, a] of history) messages.push({ role: "user", content: q }, { role: "assistant", content: a });
  messages.push({ role: "user", content: query });
  addMessage("user", query);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  controller = new AbortController();
  setBusy(true);
  els.status.textContent = "";
  let answer = "";
  let finish = null;
  let usage = null;
  const started = performance.now();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      signal: controller.signal,
      body: JSON.stringify({
        model: els.model.value || undefined,
        messages,
        stream: true,
        max_length: Math.max(1, Number(els.maxLength.value)),
        top_p: Number(els.topP.value),
        temperature: Number(els.temperature.value),
      }),
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => null);
      throw new Error(body && body.error ? body.error.message : `${resp.status} ${resp.statusText}`);
    }
    await readEvents(resp, (chunk) => {
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        bubble.innerHTML = renderMarkdown(answer);
        els.messages.scrollTop = els.messages.scrollHeight;
      }
      if (choice && choice.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    });
    history.push([query, answer]);
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    els.status.textContent = `${finish || "done"} · ${usage ? usage.completion_tokens + " tokens · " : ""}${secs} s`;
  } catch (err) {
    if (err.name === "AbortError") {
      history.push([query, answer]);
      els.status.textContent = "stopped";
    } else {
      bubble.classList.add("error");
      bubble.textContent = "Error: " + err.message;
    }
  } finally {
    bubble.classList.remove("streaming");
    controller = null;
    setBusy(false);
    els.prompt.focus();
  }
}

els.form.addEventListener("submit", (e) => { e.preventDefault(); send(); });
els.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
els.stop.addEventListener("click", () => { if (controller) controller.abort(); });
els.clear.addEventListener("click", () => {
  history = [];
  els.messages.innerHTML = "";
  els.status.textContent = "";
  els.prompt.focus();
});
els.model.addEventListener("change", () => localStorage.setItem("chatglm.model", els.model.value));
bindSlider(els.maxLength, 0);
bindSlider(els.topP, 2);
bindSlider(els.temperature, 2);
setBusy(false);
loadModels();

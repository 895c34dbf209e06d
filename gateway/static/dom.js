// Small DOM helpers. Text always goes in as textContent, never as HTML.

export const byId = (id) => document.getElementById(id);

// el("li", {class: "x", data: {state: "paused"}}, "text", childNode, ...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    setAttribute(node, name, value);
  }
  for (const child of children) {
    append(node, child);
  }
  return node;
}

function setAttribute(node, name, value) {
  if (value === undefined || value === null || value === false) return;
  if (name === "data") {
    Object.assign(node.dataset, value);
  } else if (name === "on") {
    for (const [event, handler] of Object.entries(value)) {
      node.addEventListener(event, handler);
    }
  } else {
    node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, child) {
  if (child === undefined || child === null || child === false) return;
  node.append(child instanceof Node ? child : document.createTextNode(String(child)));
}

export function setText(id, text) {
  byId(id).textContent = text ?? "";
}

export function clear(node) {
  node.replaceChildren();
}

export function show(id, visible = true) {
  byId(id).hidden = !visible;
}

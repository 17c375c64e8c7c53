// Fixture server: GET /sleep/<ms>/<nonce> sleeps <ms> then answers 200; GET /ok/<nonce> 200.
const http = require("http");
const port = Number(process.argv[2]);
http
  .createServer((req, res) => {
    const parts = req.url.split("/");
    const reply = (body) => {
      res.writeHead(200, { "Content-Length": Buffer.byteLength(body) });
      res.end(body);
    };
    if (parts[1] === "sleep") {
      const ms = Number(parts[2]);
      setTimeout(() => reply(`slept ${ms}\n`), ms);
    } else if (parts[1] === "ok") {
      reply("ok\n");
    } else {
      res.writeHead(404, { "Content-Length": 0 });
      res.end();
    }
  })
  .listen(port, "127.0.0.1");

// cellbox kernel driver for Java: runs notebook cells in one JShell (the JDK's own
// read-eval-print engine), so that variables, methods, classes and imports carry from
// cell to cell.
//
// guest-init starts one process per context as
//   java --add-opens=... -cp /usr/share/java/gson.jar CellboxKernel.java (see guest-init/src/kernel.rs)
// with the protocol of cellbox_kernel.py:
//   fd 3  requests, one JSON object per line: {"code": "...", "env": {"K": "V"}}
//   fd 4  events,   one JSON object per line: ready, stdout, stderr, result, error, end
// A cell is split into snippets as JShell would read them; the value of its last
// expression is its result, a compile error or an exception its error. Snippets run in
// this JVM (JShell's local engine): System.out and System.err become events. SIGINT (the
// parent's timeout or interrupt) stops the running snippet; the shell and its state stay.

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.stream.Collectors;
import jdk.jshell.EvalException;
import jdk.jshell.ExpressionSnippet;
import jdk.jshell.JShell;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;
import jdk.jshell.VarSnippet;

public class CellboxKernel {
    static final int CHUNK = 1 << 16;
    static OutputStream events;
    static volatile boolean interrupted;

    static synchronized void emit(JsonObject event) {
        try {
            events.write((event.toString() + "\n").getBytes(StandardCharsets.UTF_8));
            events.flush();
        } catch (IOException gone) {
            Runtime.getRuntime().halt(3); // the parent is gone
        }
    }

    static JsonObject event(String type) {
        JsonObject event = new JsonObject();
        event.addProperty("type", type);
        return event;
    }

    static void error(String name, String value, String traceback) {
        JsonObject event = event("error");
        event.addProperty("name", name);
        event.addProperty("value", value == null ? "" : value);
        event.addProperty("traceback", traceback);
        emit(event);
    }

    /** System.out or System.err: text sent as events at each newline or flush. */
    static final class EventStream extends OutputStream {
        final String kind;
        final java.io.ByteArrayOutputStream buffer = new java.io.ByteArrayOutputStream();

        EventStream(String kind) {
            this.kind = kind;
        }

        @Override
        public synchronized void write(int b) {
            buffer.write(b);
            if (b == '\n') flush();
            else if (buffer.size() >= CHUNK) sendWhole();
        }

        @Override
        public synchronized void write(byte[] bytes, int offset, int length) {
            buffer.write(bytes, offset, length);
            for (int i = offset + length - 1; i >= offset; i--) {
                if (bytes[i] == '\n') {
                    sendUpTo(lastLineEnd(buffer.toByteArray()));
                    break;
                }
            }
            if (buffer.size() >= CHUNK) sendWhole();
        }

        /** A full buffer: everything but a character cut at its end. */
        private void sendWhole() {
            byte[] held = buffer.toByteArray();
            int end = held.length;
            int start = end - 1;
            while (start > 0 && end - start < 4 && (held[start] & 0xC0) == 0x80) start--;
            int lead = held[start] & 0xFF;
            int size = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
            sendUpTo(end - start < size ? start : end);
        }

        static int lastLineEnd(byte[] held) {
            int end = held.length;
            while (end > 0 && held[end - 1] != '\n') end--;
            return end;
        }

        /** Sends the first `end` buffered bytes as text; keeps the rest. */
        private void sendUpTo(int end) {
            byte[] held = buffer.toByteArray();
            buffer.reset();
            buffer.write(held, end, held.length - end);
            if (end == 0) return;
            // A line and its newline go as two texts, as E2B's Java kernel
            // (IJava) sends what `println` writes.
            String text = new String(held, 0, end, StandardCharsets.UTF_8);
            int from = 0;
            while (from < text.length()) {
                int newline = text.indexOf('\n', from);
                if (newline < 0) {
                    send(text.substring(from));
                    break;
                }
                if (newline > from) send(text.substring(from, newline));
                send("\n");
                from = newline + 1;
            }
        }

        private void send(String text) {
            JsonObject event = event(kind);
            event.addProperty("text", text);
            emit(event);
        }

        /** Sends everything buffered (at a newline or at the cell's end). */
        @Override
        public synchronized void flush() {
            sendUpTo(buffer.size());
        }
    }

    /** Sets (value) or removes (null) an environment variable as System.getenv sees it. */
    @SuppressWarnings("unchecked")
    static void setenv(String key, String value) throws ReflectiveOperationException {
        Map<String, String> view = System.getenv();
        Field field = view.getClass().getDeclaredField("m");
        field.setAccessible(true);
        Map<String, String> map = (Map<String, String>) field.get(view);
        if (value == null) map.remove(key);
        else map.put(key, value);
    }

    final JShell shell;
    final PrintStream out;
    final PrintStream err;
    int count = 1;

    CellboxKernel() {
        // Not autoflushing: text goes out a line at a time, the rest at the cell's end.
        out = new PrintStream(new EventStream("stdout"), false, StandardCharsets.UTF_8);
        err = new PrintStream(new EventStream("stderr"), false, StandardCharsets.UTF_8);
        System.setOut(out);
        System.setErr(err);
        // The sandbox's environment (its `envs` among it) as system
        // properties too, as E2B's Java kernel gives them; the JVM's own win.
        for (Map.Entry<String, String> e : System.getenv().entrySet()) {
            if (System.getProperty(e.getKey()) == null) System.setProperty(e.getKey(), e.getValue());
        }
        shell = JShell.builder().executionEngine("local").out(out).err(err).build();
    }

    /** Sets (value) or clears (null) a system property. */
    static void setProperty(String key, String value) {
        if (value == null) System.clearProperty(key);
        else System.setProperty(key, value);
    }

    /**
     * Runs one cell: its output, result and error as events. Its `env` is
     * seen by System.getenv and, as in E2B's Java kernel, System.getProperty,
     * both restored afterwards.
     */
    void run(String code, Map<String, String> env) throws ReflectiveOperationException {
        Map<String, String> old = new HashMap<>();
        Map<String, String> oldProperties = new HashMap<>();
        for (Map.Entry<String, String> e : env.entrySet()) {
            old.put(e.getKey(), System.getenv(e.getKey()));
            oldProperties.put(e.getKey(), System.getProperty(e.getKey()));
            setenv(e.getKey(), e.getValue());
            setProperty(e.getKey(), e.getValue());
        }
        interrupted = false;
        try {
            runSnippets(code);
        } finally {
            out.flush();
            err.flush();
            for (Map.Entry<String, String> e : old.entrySet()) setenv(e.getKey(), e.getValue());
            for (Map.Entry<String, String> e : oldProperties.entrySet()) setProperty(e.getKey(), e.getValue());
        }
    }

    void runSnippets(String code) {
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        String rest = code;
        String value = null;
        while (!rest.isBlank()) {
            SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(rest);
            if (!info.completeness().isComplete()) {
                error("CompilationError", "the cell ends in the middle of a statement", rest.strip());
                return;
            }
            rest = info.remaining();
            value = null;
            for (SnippetEvent e : shell.eval(info.source())) {
                if (interrupted) {
                    error("Interrupted", "the cell was interrupted", "");
                    return;
                }
                if (e.causeSnippet() != null) continue; // an update of an earlier snippet
                if (e.status() == Snippet.Status.REJECTED) {
                    String messages = shell.diagnostics(e.snippet())
                            .map(d -> d.getMessage(null))
                            .collect(Collectors.joining("\n"));
                    error("CompilationError", messages, e.snippet().source().strip());
                    return;
                }
                if (e.exception() != null) {
                    reportException(e.exception());
                    return;
                }
                if (isExpression(e.snippet())) value = shown(e.snippet(), e.value());
            }
        }
        if (value != null) {
            JsonObject result = event("result");
            result.addProperty("is_main_result", true);
            result.addProperty("text", value);
            emit(result);
        }
    }

    /** A value as E2B's Java kernel shows it: a String as itself, not as a literal. */
    static String shown(Snippet snippet, String value) {
        String type = snippet instanceof VarSnippet
                ? ((VarSnippet) snippet).typeName()
                : ((ExpressionSnippet) snippet).typeName();
        boolean text = type.equals("String") || type.equals("java.lang.String");
        if (!text || value == null || value.length() < 2 || !value.startsWith("\"")) return value;
        StringBuilder plain = new StringBuilder();
        for (int i = 1; i < value.length() - 1; i++) {
            char c = value.charAt(i);
            if (c != '\\' || i + 1 >= value.length() - 1) {
                plain.append(c);
                continue;
            }
            char next = value.charAt(++i);
            switch (next) {
                case 'n': plain.append('\n'); break;
                case 't': plain.append('\t'); break;
                case 'r': plain.append('\r'); break;
                case 'b': plain.append('\b'); break;
                case 'f': plain.append('\f'); break;
                case 'u':
                    if (i + 4 < value.length()) {
                        plain.append((char) Integer.parseInt(value.substring(i + 1, i + 5), 16));
                        i += 4;
                    }
                    break;
                default: plain.append(next); // \" \' \\
            }
        }
        return plain.toString();
    }

    static boolean isExpression(Snippet snippet) {
        return snippet instanceof ExpressionSnippet
                || (snippet instanceof VarSnippet
                        && snippet.subKind() == Snippet.SubKind.TEMP_VAR_EXPRESSION_SUBKIND);
    }

    void reportException(Exception exception) {
        StringWriter trace = new StringWriter();
        exception.printStackTrace(new PrintWriter(trace));
        if (exception instanceof EvalException) {
            String name = ((EvalException) exception).getExceptionClassName();
            error(name, exception.getMessage(), trace.toString().replace(
                    EvalException.class.getName() + ": ", name + ": "));
        } else if (exception instanceof UnresolvedReferenceException) {
            String what = ((UnresolvedReferenceException) exception).getSnippet().source().strip();
            error("UnresolvedReference", "it uses something not defined yet: " + what, trace.toString());
        } else if (interrupted) {
            error("Interrupted", "the cell was interrupted", "");
        } else {
            error(exception.getClass().getSimpleName(), exception.getMessage(), trace.toString());
        }
    }

    void serve(String line) {
        int number = count++;
        try {
            JsonObject request = JsonParser.parseString(line).getAsJsonObject();
            if (!request.has("code") || !request.get("code").isJsonPrimitive()) {
                throw new IllegalArgumentException("a request needs a \"code\" string");
            }
            Map<String, String> env = new HashMap<>();
            if (request.has("env") && request.get("env").isJsonObject()) {
                for (var e : request.getAsJsonObject("env").entrySet()) {
                    env.put(e.getKey(), e.getValue().getAsString());
                }
            }
            run(request.get("code").getAsString(), env);
        } catch (Exception bad) { // a bad request
            error(bad.getClass().getSimpleName(), String.valueOf(bad.getMessage()), "");
        }
        JsonObject end = event("end");
        end.addProperty("execution_count", number);
        emit(end);
    }

    /** An inherited file descriptor by number (Java has no public way to wrap one;
     *  java.io is opened to this class for it). Processes that Java starts never
     *  inherit it: Java closes every descriptor above 2 in its children. */
    static FileDescriptor descriptor(int number) throws ReflectiveOperationException {
        FileDescriptor descriptor = new FileDescriptor();
        Field field = FileDescriptor.class.getDeclaredField("fd");
        field.setAccessible(true);
        field.setInt(descriptor, number);
        return descriptor;
    }

    public static void main(String[] args) throws IOException, ReflectiveOperationException {
        events = new FileOutputStream(descriptor(4));
        BufferedReader requests = new BufferedReader(new InputStreamReader(
                new FileInputStream(descriptor(3)), StandardCharsets.UTF_8));
        CellboxKernel kernel = new CellboxKernel();
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), signal -> {
            interrupted = true;
            kernel.shell.stop();
        });
        kernel.shell.eval("1"); // warms the compiler before the first cell
        emit(event("ready"));
        for (String line; (line = requests.readLine()) != null; ) {
            if (!line.isBlank()) kernel.serve(line);
        }
        Runtime.getRuntime().halt(0);
    }
}
